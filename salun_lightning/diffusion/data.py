"""Class-labelled (and optionally captioned) images for diffusion training and unlearning.

The images come from the loaders of :mod:`salun_lightning.data.sources` (their training split); a forgotten class
splits them into the forget set D_f and the retain set D_r. Batches are dicts ``{"image", "class", "prompt"}``;
:meth:`DiffusionDataModule.on_after_batch_transfer` turns the uint8 images into float in ``[-1, 1]`` at
``image_size`` on the batch's device.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader
from typing_extensions import override

from salun_lightning.data.datamodule import ImageSourceDataModule, IndexedImageDataset
from salun_lightning.data.sources import (
    KNOWN_DATASETS,
    ImageData,
    directory_images,
    find_layout,
    is_image,
    check_image_folder_path,
)
from salun_lightning.data.splits import forget_set_id, resolve_class
from salun_lightning.diffusion.prompts import read_prompts_csv
from salun_lightning.runs import method_name, open_run, run_id_of, write_forget_set

STREAMS = ("full", "retain", "forget", "forget_retain")


def to_diffusion_range(images: Tensor, size: Optional[int] = None, channels: Optional[int] = None) -> Tensor:
    """uint8 images ``[B, C, H, W]`` to float32 in ``[-1, 1]``, optionally square ``size`` and ``channels``.

    Resizing scales the shorter side to ``size`` (bilinear, antialiased) and crops the centre. Grey images become
    RGB by repeating the channel; RGB images become grey by ITU-R 601 luma.

    Example::

        >>> to_diffusion_range(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8), size=16, channels=3).shape
        torch.Size([2, 3, 16, 16])
    """
    x = images.float().div(127.5).sub(1.0)
    if channels is not None and channels != x.shape[1]:
        if (x.shape[1], channels) == (1, 3):
            x = x.expand(-1, 3, -1, -1)
        elif (x.shape[1], channels) == (3, 1):
            x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels.")
    height, width = x.shape[-2:]
    if size is not None and (height, width) != (size, size):
        scale = size / min(height, width)
        resized = (max(size, round(height * scale)), max(size, round(width * scale)))
        x = F.interpolate(x, size=resized, mode="bilinear", antialias=True, align_corners=False)
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x.clamp(-1.0, 1.0).contiguous()


class CollateDiffusionBatch:
    """The ``collate_fn``: an :class:`IndexedImageDataset` batch to ``{"image", "class", "prompt"}``."""

    def __init__(self, prompts: Sequence[str]) -> None:
        self.prompts = list(prompts)

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        return {
            "image": batch["image"],
            "class": batch["label"],
            "prompt": [self.prompts[i] for i in batch["index"].tolist()],
        }


class DiffusionDataModule(ImageSourceDataModule):
    """Labelled images for diffusion unlearning: all of them, the retained classes, or the forgotten class.

    Training streams (``stream``: the model's ``train_stream``, which the ``salun`` command line links): ``"full"``
    (every training image),
    ``"retain"`` (all but the forgotten class), ``"forget"`` (the forgotten class) and ``"forget_retain"``, a dict
    ``{"forget": batch, "retain": batch}`` every step. An epoch of ``"forget_retain"`` is one pass over the forget set
    (as the reference code): ``ceil(len(D_f) / batch_size)`` steps, a retain batch beside each forget batch. When the
    retain set has at least as many batches, the ``CombinedLoader`` runs in ``min_size`` mode (the epoch ends with
    the forget set, and every epoch draws a fresh shuffle of the retain set); otherwise in ``max_size_cycle`` mode (the
    retain set cycles). Both are plain ``DataLoader`` objects, so Lightning shards each under DDP.
    :meth:`forget_dataloader` (the saliency mask's data) and :meth:`retain_dataloader` are unshuffled. When a fit
    sets up with a forgotten class, rank zero writes ``forget_set.json`` and ``forget_indices.json`` into the run
    directory (``trainer.default_root_dir``).

    Every image has a prompt: ``prompt_template`` filled with its class name (underscores become spaces), or, with
    ``prompts_csv``, the ``prompt_column`` of the CSV row whose ``file_column`` is the image's path relative to the
    ``train`` folder of an image folder (``<class>/<file name>``). :attr:`class_prompts` (what the model samples a
    class with and takes pseudo and concept prompts from) are the template's, except that with ``prompts_csv`` a class
    whose training images all share one prompt has that prompt (e.g. images generated from "a photo of a nude
    person").

    Args:
        dataset: ``"digits"``, ``"cifar10"``, ``"cifar100"``, ``"svhn"`` or ``"image_folder"`` (see
            :mod:`salun_lightning.data.sources`); the training split is used.
        data_path: torchvision folder or image folder / archive (as for ``UnlearningDataModule``).
        cache_dir: where decoded image folders are cached.
        download: let ``prepare_data`` download a torchvision set.
        forget_class: the class to forget (name or index); ``None`` only for the ``"full"`` stream.
        image_size: square side length of the batches (resize the shorter side and crop the centre); ``None`` keeps
            the source size (square sources only).
        channels: convert images to 1 (grey) or 3 (RGB) channels; ``None`` keeps the source's.
        prompt_template: prompt of each class, ``{class}`` replaced by the class name.
        prompts_csv: a CSV with one prompt per training image of an image folder.
        prompt_column: the CSV column holding the prompts.
        file_column: the CSV column holding the image paths.
        batch_size: training batch size (of each of the two streams of ``"forget_retain"``).
        eval_batch_size: batch size of ``forget_dataloader``/``retain_dataloader`` (default ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffles.
        stream: the training stream: the model's ``train_stream``. Required by ``train_dataloader``.

    Raises:
        ValueError: an unknown class, template field, prompt column or file, or a non-square source without
            ``image_size``; checked in ``__init__`` where possible, else in ``setup``.

    Example::

        >>> data = DiffusionDataModule("digits", forget_class=0, image_size=16, batch_size=8, stream="forget_retain")
        >>> data.setup("fit")
        >>> batch = data.on_after_batch_transfer(next(iter(data.forget_dataloader())), 0)
        >>> batch["image"].shape, batch["class"][0].item(), batch["prompt"][0]
        (torch.Size([8, 1, 16, 16]), 0, 'an image of 0')
    """

    def __init__(
        self,
        dataset: Literal["digits", "cifar10", "cifar100", "svhn", "image_folder"] = "digits",
        data_path: Optional[str] = None,
        cache_dir: Optional[str] = None,
        download: bool = False,
        forget_class: Optional[Union[int, str]] = None,
        image_size: Optional[int] = None,
        channels: Optional[Literal[1, 3]] = None,
        prompt_template: str = "an image of {class}",
        prompts_csv: Optional[str] = None,
        prompt_column: str = "prompt",
        file_column: str = "file",
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        stream: Optional[Literal["full", "retain", "forget", "forget_retain"]] = None,
    ) -> None:
        super().__init__()
        # not logged: the model logs its forget_class as the resolved index, which a logger would find in conflict
        # with this name or index as given (config.yaml keeps both)
        self.save_hyperparameters(logger=False)
        if dataset not in ("digits", "image_folder", *KNOWN_DATASETS):
            raise ValueError(f"unknown dataset {dataset!r}; expected digits, cifar10, cifar100, svhn or image_folder.")
        if dataset == "image_folder" and data_path is None:
            raise ValueError("dataset='image_folder' needs data_path: a train/<class>/ image folder or an archive.")
        if prompts_csv is not None and dataset != "image_folder":
            raise ValueError("prompts_csv names image-folder files: use it with dataset='image_folder'.")
        if stream is not None and stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}.")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey), 3 (RGB) or None (the source's), got {channels!r}.")
        if image_size is not None and image_size < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError("image_size and batch_size must be positive and num_workers non-negative.")
        try:
            prompt_template.format(**{"class": "x"})
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"prompt_template {prompt_template!r} is not a template with one {{class}} field ({err!r}); "
                "write it like 'an image of {class}'."
            ) from None
        self._init_source(dataset, data_path, cache_dir)
        known = KNOWN_DATASETS.get(dataset)
        if known is not None and forget_class is not None:
            resolve_class(forget_class, known.class_names)  # an unknown class fails now
        self.eval_batch_size = eval_batch_size or batch_size
        self._prompts: Optional[list[str]] = None

    # ---------------------------------------------------------------------------------------------- metadata
    @property
    def forget_set_id(self) -> str:
        """The identity of the forget set (every training image of the forgotten class)."""
        return forget_set_id(self.hparams.dataset, len(self._load().train_labels), self._indices("forget"))

    @property
    def forget_class_index(self) -> Optional[int]:
        """The forgotten class's index (``None`` without one); an image folder is read for its class names."""
        if self.hparams.forget_class is None:
            return None
        return resolve_class(self.hparams.forget_class, self.class_names)

    @property
    def forget_set_description(self) -> str:
        """The forgetting scenario in words: ``class 0 (airplane)``."""
        index = resolve_class(self.hparams.forget_class, self.class_names)
        return f"class {index} ({self.class_names[index]})"

    @property
    def class_prompts(self) -> list[str]:
        """The prompt of every class, in label order: the template's, or with ``prompts_csv`` the one prompt that all
        of a class's training images share (a class with several prompts keeps the template's)."""
        prompts = self.template_prompts
        if self.hparams.prompts_csv is None:
            return prompts
        data = self._load()
        if self._prompts is None:
            self._prompts = self._read_prompts(data)
        shared: dict[int, set[str]] = {}
        for label, prompt in zip(data.train_labels.tolist(), self._prompts):
            shared.setdefault(label, set()).add(prompt)
        return [next(iter(shared[c])) if len(shared.get(c, ())) == 1 else prompts[c] for c in range(len(prompts))]

    @property
    def template_prompts(self) -> list[str]:
        """``prompt_template`` filled with every class name, in label order."""
        return [self.hparams.prompt_template.format(**{"class": name.replace("_", " ")}) for name in self.class_names]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the batches' images after :meth:`on_after_batch_transfer`."""
        known = KNOWN_DATASETS.get(self.hparams.dataset)
        channels, height, width = known.image_shape if known is not None else self._load().train_images.shape[1:]
        size = self.hparams.image_size
        if size is None and height != width:
            raise ValueError(f"the images are {height}x{width}, not square: set image_size, e.g. {min(height, width)}.")
        return (self.hparams.channels or channels, size or height, size or height)

    # ---------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, stage: str = "fit") -> None:
        """Load the images, resolve the forgotten class and read the prompts (once)."""
        data = self._load()
        _ = self.forget_class_index  # raises now for an unknown class
        if self._prompts is None:
            self._prompts = self._read_prompts(data)
        _ = self.image_shape  # raises now for non-square images without image_size
        trainer = self.trainer
        if stage != "fit" or trainer is None:
            return
        if trainer.lightning_module is not None:
            self.check_stream(trainer.lightning_module)
        directory = open_run(trainer, method_name(trainer.lightning_module))
        if trainer.is_global_zero and self.forget_class_index is not None:
            forget = self._indices("forget")
            record = {
                "id": self.forget_set_id,
                "description": self.forget_set_description,
                "dataset": self.hparams.dataset,
                "seed": self.hparams.seed,
                "count": len(forget),
                "run_id": run_id_of(trainer),
            }
            write_forget_set(directory, record, forget.tolist())

    def run_inputs(self) -> dict[str, Optional[str]]:
        """The files this data module reads during a fit (a fit refuses a run directory that holds one of them)."""
        return {"data_path": self.hparams.data_path, "prompts_csv": self.hparams.prompts_csv}

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Make ``"image"`` float in ``[-1, 1]`` at ``image_size`` (also inside a ``{"forget", "retain"}`` dict)."""
        if isinstance(batch, dict) and "image" not in batch:
            return {key: self.on_after_batch_transfer(value, dataloader_idx) for key, value in batch.items()}
        if batch["image"].dtype == torch.uint8:
            hp = self.hparams
            batch = {**batch, "image": to_diffusion_range(batch["image"], hp.image_size, hp.channels)}
        return batch

    # ---------------------------------------------------------------------------------------------- loaders
    @override
    def train_dataloader(self) -> Union[DataLoader, CombinedLoader]:
        """The training stream (see the class docstring), shuffled with ``seed``; an epoch of ``"forget_retain"`` is
        one pass over the forget set."""
        stream = self.resolve_stream()
        if stream == "forget_retain":
            loaders = {name: self._loader(self._indices(name), shuffle=True) for name in ("forget", "retain")}
            return CombinedLoader(loaders, mode=forget_epoch_mode(len(loaders["forget"]), len(loaders["retain"])))
        return self._loader(self._indices(stream), shuffle=True)

    def forget_dataloader(self) -> DataLoader:
        """The forgotten class's images, unshuffled, with ``eval_batch_size``."""
        return self._loader(self._indices("forget"), shuffle=False)

    def retain_dataloader(self) -> DataLoader:
        """The other classes' images, unshuffled, with ``eval_batch_size``."""
        return self._loader(self._indices("retain"), shuffle=False)

    # ---------------------------------------------------------------------------------------------- internals
    def _indices(self, stream: str) -> Tensor:
        labels = self._load().train_labels
        everything = torch.arange(len(labels))
        if stream == "full":
            return everything
        if self.forget_class_index is None:
            raise ValueError(f"the {stream!r} data needs a forgotten class: set forget_class (a class name or index).")
        in_class = labels == self.forget_class_index
        return everything[in_class if stream == "forget" else ~in_class]

    def _loader(self, indices: Tensor, shuffle: bool) -> DataLoader:
        if self._prompts is None:
            raise RuntimeError("call setup() before asking DiffusionDataModule for a dataloader.")
        data = self._load()
        is_forget = torch.zeros(len(indices), dtype=torch.bool)  # unused: the stream says which set it is
        dataset = IndexedImageDataset(data.train_images, data.train_labels, indices, is_forget)
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.hparams.seed) if shuffle else None,
            collate_fn=CollateDiffusionBatch(self._prompts),
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def _read_prompts(self, data: ImageData) -> list[str]:
        hp = self.hparams
        if hp.prompts_csv is None:
            return [self.template_prompts[label] for label in data.train_labels.tolist()]
        table = read_prompts_csv(
            hp.prompts_csv,
            {hp.file_column: "set file_column to one of them", hp.prompt_column: "set prompt_column to one of them"},
            prompt_column=hp.prompt_column,
            file_column=hp.file_column,
            name="prompts_csv",
            missing_hint=f"give a CSV with a {hp.file_column!r} and a {hp.prompt_column!r} column.",
            empty_consequence=", so that image would train the null condition",
        )
        by_file = {row.file: row[hp.prompt_column] for row in table.rows}
        files = train_image_files(self.data_path)
        missing = [file for file in files if file not in by_file]
        if missing:
            raise ValueError(
                f"{hp.prompts_csv} has no prompt for {len(missing)} training images, e.g. {', '.join(missing[:3])}; "
                f"add rows whose {hp.file_column!r} is the path relative to the train folder."
            )
        return [by_file[file] for file in files]


def forget_epoch_mode(forget_batches: int, retain_batches: int) -> str:
    """The ``CombinedLoader`` mode whose epoch is one pass over the forget loader, the retain loader beside it.

    ``min_size`` when the retain loader is at least as long (it stops with the forget loader and starts afresh, with a
    new shuffle, next epoch), ``max_size_cycle`` when it is shorter (it cycles). Lightning's distributed samplers
    shorten both loaders alike, so the choice holds on every rank.

    Example::

        >>> forget_epoch_mode(3, 40), forget_epoch_mode(3, 2)
        ('min_size', 'max_size_cycle')
    """
    return "min_size" if retain_batches >= forget_batches else "max_size_cycle"


def train_image_files(path: Path) -> list[str]:
    """The training images of an image folder or archive as ``<class>/<file>``, in the order of their tensors."""
    check_image_folder_path(path)
    if path.is_dir():
        names = [rel for rel, _ in directory_images(path)]
    elif path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir() and is_image(info.filename)]
    else:
        with tarfile.open(path, "r|*") as archive:
            names = [member.name for member in archive if member.isfile() and is_image(member.name)]
    _, splits = find_layout(dict.fromkeys(names), path)
    return ["/".join(Path(rel).parts[-2:]) for rel, _ in sorted(splits["train"])]
