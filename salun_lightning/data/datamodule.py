"""The classifier-unlearning LightningDataModule: forget/retain/validation splits and training streams."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only, rank_zero_warn
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from typing_extensions import override

from salun_lightning.data.augment import normalize, random_crop_flip
from salun_lightning.data.sources import (
    DATASETS,
    KNOWN_DATASETS,
    ImageData,
    default_cache_dir,
    load_source,
    prepare_source,
)
from salun_lightning.data.splits import Split, forget_set_id, make_split, read_indices_file, resolve_class
from salun_lightning.runs import (
    FORGET_INDICES_FILENAME,
    FORGET_SET_FILENAME,
    check_writable,
    close_run,
    method_name,
    open_run,
    record_outputs,
    run_id_of,
    write_forget_set,
)

STREAMS = ("full", "retain", "forget", "forget_retain", "paired", "none")
SCHEDULES = ("sequential", "interleaved")
FORGET_SETS = ("random", "class", "indices")


TINY_LAST_BATCH = 0.1  # a training block's last batch under this share of batch_size gets a warning


class IndexedImageDataset(Dataset):
    """The samples ``indices`` of a decoded split, fetched a whole batch at a time.

    ``DataLoader`` calls ``__getitems__`` with the positions of one batch; it returns the batch already stacked, so
    the loader's ``collate_fn`` only passes it through (:func:`collate_batch`).

    Args:
        images: uint8 ``[N, C, H, W]``, the whole split.
        labels: int64 ``[N]``.
        indices: int64 ``[M]``, the samples of the split this dataset serves; reported as ``"index"``.
        is_forget: bool ``[M]``, whether each of those samples is in the forget set.
    """

    def __init__(self, images: Tensor, labels: Tensor, indices: Tensor, is_forget: Tensor) -> None:
        self.images, self.labels, self.indices, self.is_forget = images, labels, indices, is_forget

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        index = self.indices[position]
        is_forget = self.is_forget[position]
        return {"image": self.images[index], "label": self.labels[index], "index": index, "is_forget": is_forget}

    def __getitems__(self, positions: Sequence[int]) -> dict[str, Tensor]:
        positions = torch.as_tensor(positions, dtype=torch.int64)
        positions = positions[positions != PAD]  # a block's short last batch (ShuffledBlocksSampler)
        indices = self.indices[positions]
        is_forget = self.is_forget[positions]
        return {"image": self.images[indices], "label": self.labels[indices], "index": indices, "is_forget": is_forget}


def collate_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``collate_fn`` of the evaluation loaders: the batch comes stacked from ``__getitems__``."""
    return batch


def collate_augmented_batch(batch: dict[str, Tensor]) -> dict[str, Any]:
    """The ``collate_fn`` of an augmented training stream: marks the batch with ``"augment": True``."""
    return {**batch, "augment": True}


class CollateSplit:
    """The ``collate_fn`` of a test loader: marks every batch with the name of its split (``batch["split"]``)."""

    def __init__(self, split: str) -> None:
        self.split = split

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        return {**batch, "split": self.split}


PAD = -1  # a position ShuffledBlocksSampler yields to end a block's last batch early; the dataset drops it


class ShuffledBlocksSampler(DistributedSampler):
    """Yield consecutive blocks of positions once per epoch, block after block, each block shuffled; DDP-aware.

    With one block this is a seeded random permutation; with blocks ``[len(D_f), len(D_r)]`` it streams the whole
    forget set first, then the whole retain set. The permutations depend only on ``seed`` and the epoch given to
    ``set_epoch`` (Lightning calls it every epoch; without it every epoch has the same order).

    With ``batch_size``, every block's part is padded with :data:`PAD` positions up to a multiple of ``batch_size``
    (which :class:`IndexedImageDataset` drops), so that a batch never spans two blocks: each block ends with its own
    short last batch, as separate loaders over D_f and D_r would give (``ceil(|D_f| / B) + ceil(|D_r| / B)`` steps an
    epoch, the reference code's sequential schedule).

    Under data parallelism every block is sharded on its own: rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of
    the block's permutation, which is first padded to a multiple of ``W`` by repeating its start (as
    ``DistributedSampler`` pads), so every rank sees its share of D_f before its share of D_r, in batches of its own
    block, and all ranks have the same length. Being a ``DistributedSampler``, it is left in place by Lightning
    (which would otherwise wrap it in a sampler that reshuffles the positions).

    Args:
        block_sizes: the size of every block, in streaming order.
        seed: the seed of the permutations.
        num_replicas: the number of processes sharing the stream.
        rank: this process's rank in ``0..num_replicas-1``.
        batch_size: the loader's batch size, to end every block's part with a short batch (``None``: no padding).
        drop_last: with ``batch_size``, leave out each block's short last batch instead (a block whose part is
            shorter than one batch stays whole): which samples are left out changes with the epoch's permutation.

    Example::

        >>> sampler = ShuffledBlocksSampler([3, 5], seed=0, batch_size=2)
        >>> order = list(sampler)
        >>> len(sampler), [p if p == PAD else ("f" if p < 3 else "r") for p in order]
        (10, ['f', 'f', 'f', -1, 'r', 'r', 'r', 'r', 'r', -1])
        >>> sampler = ShuffledBlocksSampler([3, 5], seed=0, batch_size=2, drop_last=True)
        >>> len(sampler), ["f" if p < 3 else "r" for p in sampler]
        (6, ['f', 'f', 'r', 'r', 'r', 'r'])
    """

    def __init__(self, block_sizes: Sequence[int], seed: int, num_replicas: int = 1, rank: int = 0,
                 batch_size: Optional[int] = None, drop_last: bool = False) -> None:
        super().__init__(range(sum(block_sizes)), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.block_sizes = list(block_sizes)
        self.batch_size = batch_size
        self.drop_last = drop_last and batch_size is not None

    def _part(self, size: int) -> int:
        """The positions (padding included) this rank yields for a block of ``size``."""
        share = math.ceil(size / self.num_replicas)
        if self.batch_size is None:
            return share
        if self.drop_last and share >= self.batch_size:
            return share // self.batch_size * self.batch_size
        return math.ceil(share / self.batch_size) * self.batch_size

    def __len__(self) -> int:
        return sum(self._part(size) for size in self.block_sizes)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (1 << 63))
        start, order = 0, []
        for size in self.block_sizes:
            permutation = start + torch.randperm(size, generator=generator)
            padded_size = math.ceil(size / self.num_replicas) * self.num_replicas
            if padded_size > size:
                permutation = permutation.repeat(math.ceil(padded_size / size))[:padded_size]
            share = permutation[self.rank :: self.num_replicas][: self._part(size)]
            order += [share, torch.full((self._part(size) - len(share),), PAD, dtype=share.dtype)]
            start += size
        return iter(torch.cat(order).tolist())


class ImageSourceDataModule(LightningDataModule):
    """Base of the classifier and diffusion data modules: a named image source, located once and loaded once.

    Subclasses call :meth:`_init_source` in ``__init__`` and save ``dataset`` and ``download`` as hyper-parameters.
    """

    def _init_source(self, dataset: str, data_path: Optional[str], cache_dir: Optional[str]) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if dataset == "image_folder":
            self.data_path: Optional[Path] = Path(data_path).expanduser()
        elif dataset == "digits":
            self.data_path = None
        else:
            self.data_path = Path(data_path).expanduser() if data_path is not None else self.cache_dir / "torchvision"
        self._data: Optional[ImageData] = None

    @property
    def class_names(self) -> list[str]:
        """The class names, in label order."""
        known = KNOWN_DATASETS.get(self.hparams.dataset)
        return list(known.class_names if known is not None else self._load().class_names)

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.class_names)

    @override
    def prepare_data(self) -> None:
        """Download the torchvision set (``download=True``), or check its files; decode and cache an image folder."""
        prepare_source(self.hparams.dataset, self.data_path, self.cache_dir, self.hparams.download)

    def resolve_stream(self) -> str:
        """The training stream (the ``stream`` argument: the model's ``train_stream``).

        Raises:
            ValueError: ``stream`` is not set.
        """
        if self.hparams.stream is None:
            raise ValueError(
                "the data module has no training stream: set stream=<the model's train_stream> (the salun command line "
                "links it from the model's method)."
            )
        return self.hparams.stream

    def check_stream(self, model: Any) -> None:
        """Refuse a model whose method trains on another stream than this module serves (a model without
        ``train_stream`` is not checked).

        Raises:
            ValueError: the message names both streams and the fix.
        """
        stream = getattr(model, "train_stream", None)
        if stream is not None and stream != self.hparams.stream:
            method = getattr(model.hparams, "method", "?")
            served = "no training stream" if self.hparams.stream is None else f"the {self.hparams.stream!r} stream"
            raise ValueError(
                f"the data module serves {served} but the model's method {method!r} trains "
                f"on {stream!r}: its results would be another method's. Create the data module with "
                "stream=model.train_stream (the salun command line links it)."
            )

    @override
    def teardown(self, stage: str) -> None:
        """End a fit's run when its model does not (a model of another project): the mark goes, the run is done."""
        if stage == "fit" and self.trainer is not None:
            close_run(self.trainer)

    @override
    def on_exception(self, exception: BaseException) -> None:
        """A fit that failed leaves its run directory marked; the next fit with this trainer opens a new run."""
        if self.trainer is not None:
            close_run(self.trainer, finished=False)

    def _load(self) -> ImageData:
        if self._data is None:
            self._data = load_source(self.hparams.dataset, self.data_path, self.cache_dir)
        return self._data


class UnlearningDataModule(ImageSourceDataModule):
    """Image classification data split for machine unlearning: forget set D_f, retain set D_r, hold-out, test.

    Loaders yield dicts ``{"image": uint8 [B, C, H, W], "label": int64 [B], "index": int64 [B], "is_forget":
    bool [B]}``; ``"index"`` points into the full training set (or the test set for test samples), ``"is_forget"``
    marks forget samples. :meth:`on_after_batch_transfer` then turns ``"image"`` into normalised float32 on the
    batch's device, after a random crop (padding ``crop_padding``) and horizontal flip for training-stream batches
    when ``augment`` is on. Evaluation loaders (``retain_dataloader``, validation, test) are unshuffled and never
    augmented; so is ``forget_dataloader``, the saliency mask's data, unless ``augment_forget_loader``.

    Splits (see :mod:`salun_lightning.data.splits`): a seeded validation hold-out of ``val_size`` samples, then the
    forget set from the rest: ``forget_set="random"`` draws ``forget_fraction`` of the remaining samples (or
    ``forget_count`` of them); ``"class"`` takes every remaining sample of ``forget_class``; ``"indices"`` forgets
    every index listed in ``forget_indices_file`` (the hold-out is then drawn from the samples not listed). When a fit
    sets up, rank zero writes the forget set into the run directory (``trainer.default_root_dir``, or ``run_dir``
    without a trainer): ``forget_indices.json`` (a JSON list, reusable as ``forget_indices_file``) and
    ``forget_set.json`` (its :attr:`forget_set_id`, :attr:`forget_set_description`, dataset, seed and count). Other
    stages write nothing.

    Training streams (``stream``: the model's ``train_stream``, which the ``salun`` command line links):
    ``"full"`` all non-held-out samples (original model), ``"retain"`` D_r (retrain, ft, l1_sparse), ``"forget"`` D_f
    (ga), ``"forget_retain"`` both (rl, salun) with ``schedule="sequential"`` (each epoch: all of D_f shuffled, then all
    of D_r shuffled, each in its own batches: a short last batch ends D_f) or ``"interleaved"`` (the union
    shuffled), ``"paired"`` (neggrad_plus: batches ``{"retain": ..., "forget": ...}``, an epoch of D_r with D_f
    cycled beside it, each shuffled) and ``"none"`` (one-shot methods: an empty loader, so the fit makes no step). Under data parallelism the training sampler (:class:`ShuffledBlocksSampler`) shards every block
    itself, so each rank streams its share of D_f before its share of D_r, again in batches of one block each. ``val_size=0`` gives an empty validation list (Lightning then skips
    validation, with a warning that the list is empty).

    Test loaders, in the order of ``test_split_names``: ``["forget", "retain", "test"]``; for class-wise forgetting
    ``"test"`` holds only the remaining classes' test samples and a fourth split ``"test_forgotten_class"`` the
    forgotten class's. Every test batch carries its split's name as ``batch["split"]``.

    Args:
        dataset: ``"digits"`` (scikit-learn's embedded 8x8 digits), ``"cifar10"``, ``"cifar100"``, ``"svhn"``
            (torchvision's files), ``"tinyimagenet"`` (the ``tiny-imagenet-200`` folder; its ``val/`` split is the
            test set) or ``"image_folder"`` (a folder or archive with ``train/<class>/`` and ``test/<class>/``); see
            :mod:`salun_lightning.data.sources`.
        data_path: for torchvision sets the folder holding their files (default ``<cache_dir>/torchvision``); for
            ``tinyimagenet`` the ``tiny-imagenet-200`` folder or the folder holding it (default
            ``<cache_dir>/torchvision``); for ``image_folder`` the folder or ``.tar``/``.tar.gz``/``.tgz``/``.zip``
            archive (required). Unused by digits.
        cache_dir: where decoded image folders and TinyImageNet are cached (default ``$SALUN_CACHE`` or
            ``~/.cache/salun_lightning``).
        download: let ``prepare_data`` download a torchvision set (needs internet).
        forget_set: the forgetting scenario, ``"random"``, ``"class"`` or ``"indices"``.
        forget_fraction: random scenario: fraction in (0, 1) of the non-held-out samples to forget.
        forget_count: random scenario: number of samples to forget (instead of ``forget_fraction``).
        forget_class: class scenario: the class name or index to forget.
        forget_indices_file: indices scenario: training-set indices to forget, one per line or a JSON list.
        exclude_indices_file: training-set indices left out of every split (never trained on, forgotten or
            validated), in the same format; U-LiRA's audits hold their "never seen" examples out with it. It is part
            of the forget set's identity.
        val_size: validation hold-out from the training set: a count (int) or a fraction of it (float in [0, 1)).
            The paper holds out 5,000 of CIFAR-10's 50,000. Default 0 (no validation).
        seed: seed of the hold-out, of the random forget set and of the training shuffles.
        stream: the training stream: the LightningModule's ``train_stream``. Required by ``train_dataloader``.
        schedule: how ``"forget_retain"`` orders D_f and D_r within an epoch; default ``interleaved`` for CIFAR-100
            and TinyImageNet (as the reference code does there), else ``sequential`` (as it does for CIFAR-10 and
            SVHN).
        batch_size: training batch size.
        eval_batch_size: batch size of the evaluation loaders (default: ``batch_size``).
        drop_last: leave out every training block's incomplete last batch each epoch (the left-out samples change
            with the epoch), so that BatchNorm never normalises by a few samples: for training sets whose size is
            not a multiple of ``batch_size`` and varies, as a U-LiRA audit's shadow runs do.
        num_workers: DataLoader worker processes (the data is in memory; 0 is usually fastest).
        pin_memory: pin batches for faster host-to-GPU copies (non-blocking); ignored with ``data_on_device``.
        data_on_device: move the decoded uint8 data set to the Trainer's device once (at ``setup``), so that batches
            are gathered, augmented and normalised there: no host-side image indexing, no per-batch image copies.
            Needs ``num_workers=0``. The batches are the same as on the host: same indices, and augmentation drawn
            from this module's own seeded generator whatever the device.
        augment: random crop and horizontal flip of training batches; default on for CIFAR, TinyImageNet and image
            folders, off for digits and SVHN.
        crop_padding: zero padding before the random crop (0: no crop).
        horizontal_flip: whether augmentation flips.
        augment_forget_loader: make :meth:`forget_dataloader`, which the saliency mask reads, shuffle and augment
            like the training stream, as the reference code does (default: unshuffled, unaugmented; the test loaders
            are never augmented).
        mean: per-channel normalisation mean on the [0, 1] scale; default: the dataset's usual values, or for an
            image folder the statistics of its training images.
        std: per-channel normalisation std, as ``mean``.
        run_dir: where the forget-set files go when no trainer is attached (nothing is written when unset).

    Raises:
        ValueError: for an unknown dataset or class, a fraction outside (0, 1), missing or conflicting forget
            arguments and other argument problems; in ``setup`` for bad indices or an empty forget or retain set.
        FileNotFoundError: in ``prepare_data``/``setup`` when the data or the indices file is not where configured.

    Example::

        >>> data = UnlearningDataModule("digits", forget_fraction=0.1, val_size=100, batch_size=64, stream="retain")
        >>> data.setup("fit")
        >>> batch = next(iter(data.forget_dataloader()))
        >>> sorted(batch), batch["image"].dtype, data.test_split_names
        (['image', 'index', 'is_forget', 'label'], torch.uint8, ['forget', 'retain', 'test'])
        >>> data.forget_set_description, len(data.split.forget)
        ('random 10%', 134)
    """

    def __init__(
        self,
        dataset: Literal["digits", "cifar10", "cifar100", "svhn", "tinyimagenet", "image_folder"] = "digits",
        data_path: Optional[str] = None,
        cache_dir: Optional[str] = None,
        download: bool = False,
        forget_set: Literal["random", "class", "indices"] = "random",
        forget_fraction: Optional[float] = None,
        forget_count: Optional[int] = None,
        forget_class: Optional[Union[int, str]] = None,
        forget_indices_file: Optional[str] = None,
        exclude_indices_file: Optional[str] = None,
        val_size: Union[int, float] = 0,
        seed: int = 0,
        stream: Optional[Literal["full", "retain", "forget", "forget_retain", "paired", "none"]] = None,
        schedule: Optional[Literal["sequential", "interleaved"]] = None,
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        data_on_device: bool = False,
        augment: Optional[bool] = None,
        crop_padding: int = 4,
        horizontal_flip: bool = True,
        augment_forget_loader: bool = False,
        mean: Optional[list[float]] = None,
        std: Optional[list[float]] = None,
        run_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        # not logged: a logger would find the model's linked copies (forget_class as the resolved index, ...) in
        # conflict with these values as given; config.yaml keeps both
        self.save_hyperparameters(logger=False)
        _check_arguments(**self.hparams)
        self._init_source(dataset, data_path, cache_dir)
        self.augment = augment if augment is not None else dataset not in ("digits", "svhn")
        self.schedule = schedule or ("interleaved" if dataset in ("cifar100", "tinyimagenet") else "sequential")
        if data_on_device and num_workers > 0:
            raise ValueError("data_on_device keeps the data set on the accelerator: set num_workers=0 (the batches "
                             "are gathered there; worker processes cannot share it).")
        # Augmentation draws its crops and flips from this generator, on the CPU, whatever the batch's device: the same
        # batches on the host and on the device, under the seed. Made at the first batch (a generator does not travel
        # to ddp_spawn's processes).
        self._augment_generator: Optional[torch.Generator] = None
        self._device_data: Optional[ImageData] = None
        self.eval_batch_size = eval_batch_size or batch_size
        self.test_split_names = ["forget", "retain", "test"]
        if forget_set == "class":
            self.test_split_names.append("test_forgotten_class")
        known = KNOWN_DATASETS.get(dataset)
        if known is not None:
            if mean is not None and len(mean) != known.image_shape[0]:
                raise ValueError(
                    f"{dataset} images have {known.image_shape[0]} channels but mean/std have {len(mean)} values."
                )
            if forget_class is not None:
                resolve_class(forget_class, known.class_names)
        self.split: Optional[Split] = None
        self.forget_class_index: Optional[int] = None
        self._stats: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None
        self._device_stats: dict[torch.device, tuple[Tensor, Tensor]] = {}  # mean and std on each batch device

    # ---------------------------------------------------------------------------------------------- metadata
    @property
    def forget_set_id(self) -> str:
        """The identity of the forget set (:func:`~salun_lightning.data.splits.forget_set_id`); draws the splits."""
        self._draw_split()
        split = self._split()
        return forget_set_id(self.hparams.dataset, len(self._load().train_labels), split.forget, split.excluded)

    @property
    def forget_set_description(self) -> str:
        """The forgetting scenario in words, without the seed: ``random 10%``, ``class 0 (airplane)``, ..."""
        hp = self.hparams
        if hp.forget_set == "random":
            return f"random {hp.forget_fraction:.0%}" if hp.forget_fraction is not None else f"random {hp.forget_count}"
        if hp.forget_set == "class":
            index = resolve_class(hp.forget_class, self.class_names)
            return f"class {index} ({self.class_names[index]})"
        return f"indices from {Path(hp.forget_indices_file).name}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images."""
        known = KNOWN_DATASETS.get(self.hparams.dataset)
        return known.image_shape if known is not None else tuple(self._load().train_images.shape[1:])

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean on the [0, 1] scale."""
        return self._normalisation()[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel normalisation std on the [0, 1] scale."""
        return self._normalisation()[1]

    # ---------------------------------------------------------------------------------------------- data hooks
    @override
    def setup(self, stage: str = "fit") -> None:
        """Load the data and draw the splits (once); for ``fit``, check the model against the data, open the run
        directory (:func:`~salun_lightning.runs.open_run`) and write the forget set into it.

        Raises:
            ValueError: the trainer's model trains on another stream than ``stream``, or has fewer classes than the
                data; or the run directory cannot be used (see :func:`~salun_lightning.runs.open_run`).
        """
        self._draw_split()
        if stage != "fit":
            return
        if self.trainer is not None:
            model = self.trainer.lightning_module
            if model is not None:
                self._check_model(model)
            directory = open_run(self.trainer, method_name(model))
            if self.trainer.is_global_zero:
                self._write_forget_set(directory, run_id_of(self.trainer))
        elif self.hparams.run_dir is not None and rank_zero_only.rank == 0:
            directory = Path(self.hparams.run_dir).expanduser()
            for name in (FORGET_SET_FILENAME, FORGET_INDICES_FILENAME):
                check_writable(directory, name)
            self._write_forget_set(directory, None)
            record_outputs(directory, [FORGET_SET_FILENAME, FORGET_INDICES_FILENAME])

    def run_inputs(self) -> dict[str, Optional[str]]:
        """The files this data module reads during a fit (a fit refuses a run directory that holds one of them)."""
        return {"forget_indices_file": self.hparams.forget_indices_file,
                "exclude_indices_file": self.hparams.exclude_indices_file, "data_path": self.hparams.data_path}

    def _check_model(self, model: Any) -> None:
        """Refuse a model that would train on the wrong stream or meet labels beyond its classes (before any work)."""
        self.check_stream(model)
        classes = getattr(model.hparams, "num_classes", None)
        if isinstance(classes, int) and classes < self.num_classes:
            raise ValueError(
                f"the model has num_classes={classes} but {self.hparams.dataset} has {self.num_classes} classes "
                f"(labels 0..{self.num_classes - 1}): pass num_classes=data.num_classes (the salun command line "
                "links it)."
            )

    def _draw_split(self) -> None:
        if self.split is None:
            data = self._load()
            hp = self.hparams
            forget_indices = None
            if hp.forget_set == "class":
                self.forget_class_index = resolve_class(hp.forget_class, data.class_names)
            elif hp.forget_set == "indices":
                forget_indices = read_indices_file(hp.forget_indices_file)
            self.split = make_split(
                data.train_labels,
                seed=hp.seed,
                val_size=hp.val_size,
                forget_fraction=hp.forget_fraction,
                forget_count=hp.forget_count,
                forget_class=self.forget_class_index,
                forget_indices=forget_indices,
                exclude_indices=(read_indices_file(hp.exclude_indices_file, "exclude_indices_file")
                                 if hp.exclude_indices_file is not None else None),
            )
            if hp.mean is not None and len(hp.mean) != data.train_images.shape[1]:
                raise ValueError(
                    f"the images have {data.train_images.shape[1]} channels but mean/std have {len(hp.mean)} values."
                )

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Make ``"image"`` normalised float32 on its device; crop and flip first when ``batch["augment"]``. A
        ``paired`` batch (``{"retain": batch, "forget": batch}``) has each of its batches made so."""
        if isinstance(batch, dict) and set(batch) == {"retain", "forget"}:
            return {name: self.on_after_batch_transfer(part, dataloader_idx) for name, part in batch.items()}
        if not isinstance(batch, dict) or "image" not in batch:
            return batch
        batch = dict(batch)
        augment = batch.pop("augment", False)
        images = batch["image"]
        if images.dtype != torch.uint8:
            return batch
        if augment:
            if self._augment_generator is None:
                self._augment_generator = torch.Generator().manual_seed(self.hparams.seed)
            images = random_crop_flip(
                images, self.hparams.crop_padding, self.hparams.horizontal_flip, generator=self._augment_generator
            )
        if images.device not in self._device_stats:
            mean, std = (torch.tensor(values, device=images.device) for values in (self.mean, self.std))
            self._device_stats[images.device] = (mean, std)
        batch["image"] = normalize(images, *self._device_stats[images.device])
        return batch

    # ---------------------------------------------------------------------------------------------- loaders
    @override
    def train_dataloader(self) -> Union[DataLoader, CombinedLoader]:
        """The training stream selected by ``stream``, shuffled."""
        stream = self.resolve_stream()
        split = self._split()
        if stream == "paired":
            loaders = {name: self._shuffled_loader([getattr(split, name)]) for name in ("retain", "forget")}
            return CombinedLoader(loaders, mode="max_size_cycle")
        if stream == "none":
            return self._loader(self._train_dataset(split.forget[:0]), self.hparams.batch_size)
        if stream == "full":
            blocks = [torch.cat([split.forget, split.retain]).sort().values]
        elif stream == "retain":
            blocks = [split.retain]
        elif stream == "forget":
            blocks = [split.forget]
        elif self.schedule == "sequential":
            blocks = [split.forget, split.retain]
        else:
            blocks = [torch.cat([split.forget, split.retain])]
        return self._shuffled_loader(blocks)

    def _shuffled_loader(self, blocks: list[Tensor]) -> DataLoader:
        """A training loader streaming ``blocks`` one after the other, each shuffled and in batches of its own.

        Warns when a block ends every epoch in a tiny batch (under :data:`TINY_LAST_BATCH` of ``batch_size``): with
        BatchNorm such a batch normalises by its own few samples, and at a large learning rate it can keep a model
        from fitting its training set (docs/results.md, 'The memorising regime at an equal budget')."""
        batch = self.hparams.batch_size
        for block in blocks:
            last = len(block) % batch
            if 0 < last < TINY_LAST_BATCH * batch and not self.hparams.drop_last:
                rank_zero_warn(f"every training epoch ends a block of {len(block)} samples with a batch of {last} "
                               f"(batch_size {batch}): with BatchNorm a batch that small normalises by its own few "
                               "samples and can keep the model from fitting; choose a batch_size that leaves a fuller "
                               "last batch.")
        indices = torch.cat(blocks)
        shards = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        sampler = ShuffledBlocksSampler(
            [len(block) for block in blocks], self.hparams.seed, shards.get("num_replicas", 1), shards.get("rank", 0),
            batch_size=self.hparams.batch_size, drop_last=self.hparams.drop_last,
        )
        collate = collate_augmented_batch if self.augment else collate_batch
        return self._loader(self._train_dataset(indices), self.hparams.batch_size, sampler, collate)

    @override
    def val_dataloader(self) -> Union[DataLoader, list[DataLoader]]:
        """The validation hold-out (an empty list when ``val_size`` is 0, so that Lightning skips validation)."""
        val = self._split().val
        return self._loader(self._train_dataset(val), self.eval_batch_size) if len(val) else []

    @override
    def test_dataloader(self) -> list[DataLoader]:
        """One loader per name in ``test_split_names``, in that order."""
        data, split = self._load(), self._split()
        everything = torch.arange(len(data.test_labels))
        parts = {"forget": self._train_dataset(split.forget), "retain": self._train_dataset(split.retain)}
        if self.forget_class_index is None:
            parts["test"] = self._test_dataset(everything)
        else:
            in_class = data.test_labels == self.forget_class_index
            parts["test"] = self._test_dataset(everything[~in_class])
            parts["test_forgotten_class"] = self._test_dataset(everything[in_class])
        return [self._loader(parts[name], self.eval_batch_size, collate_fn=CollateSplit(name)) for name in parts]

    def forget_dataloader(self) -> DataLoader:
        """D_f with ``eval_batch_size``, the data of the saliency mask: unshuffled and unaugmented, or with
        ``augment_forget_loader`` shuffled (with ``seed``) and augmented as the training stream is."""
        forget = self._split().forget
        if not self.hparams.augment_forget_loader:
            return self._loader(self._train_dataset(forget), self.eval_batch_size)
        sampler = ShuffledBlocksSampler([len(forget)], self.hparams.seed)
        collate = collate_augmented_batch if self.augment else collate_batch
        return self._loader(self._train_dataset(forget), self.eval_batch_size, sampler, collate)

    def retain_dataloader(self) -> DataLoader:
        """D_r, unshuffled and unaugmented, with ``eval_batch_size``."""
        return self._loader(self._train_dataset(self._split().retain), self.eval_batch_size)

    # ---------------------------------------------------------------------------------------------- internals
    def _split(self) -> Split:
        if self.split is None:
            raise RuntimeError("call setup() before asking UnlearningDataModule for a dataloader.")
        return self.split

    def _normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._stats is None:
            hp, known = self.hparams, KNOWN_DATASETS.get(self.hparams.dataset)
            if hp.mean is not None:
                self._stats = (tuple(hp.mean), tuple(hp.std))
            elif known is not None:
                self._stats = (known.mean, known.std)
            else:
                self._stats = _channel_statistics(self._load().train_images)
        return self._stats

    def _loader_data(self) -> ImageData:
        """The decoded data set, on the Trainer's device with ``data_on_device`` (moved once), else on the host."""
        data = self._load()
        if not self.hparams.data_on_device or self.trainer is None:
            return data
        device = self.trainer.strategy.root_device
        if self._device_data is None or self._device_data.train_images.device != device:
            moved = {name: getattr(data, name).to(device) for name in ("train_images", "train_labels", "test_images",
                                                                        "test_labels")}
            self._device_data = dataclasses.replace(data, **moved)
        return self._device_data

    def _train_dataset(self, indices: Tensor) -> IndexedImageDataset:
        data, split = self._loader_data(), self._split()
        is_forget = torch.zeros(len(data.train_labels), dtype=torch.bool)
        is_forget[split.forget] = True
        return IndexedImageDataset(data.train_images, data.train_labels, indices, is_forget[indices])

    def _test_dataset(self, indices: Tensor) -> IndexedImageDataset:
        data = self._loader_data()
        is_forget = torch.zeros(len(indices), dtype=torch.bool)
        return IndexedImageDataset(data.test_images, data.test_labels, indices, is_forget)

    def _loader(
        self, dataset: Dataset, batch_size: int, sampler: Optional[Sampler] = None, collate_fn=collate_batch
    ) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory and not self.hparams.data_on_device,
            persistent_workers=workers > 0,
        )

    def _write_forget_set(self, directory: Path, run_id: Optional[str]) -> None:
        forget = self._split().forget
        record = {
            "id": self.forget_set_id,
            "description": self.forget_set_description,
            "dataset": self.hparams.dataset,
            "seed": self.hparams.seed,
            "count": len(forget),
            "run_id": run_id,
        }
        if len(self._split().excluded):
            record["excluded"] = len(self._split().excluded)  # held out of every split
        write_forget_set(directory, record, forget.tolist())


def _channel_statistics(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, in chunks (float64 sums)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].double().div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _check_arguments(
    dataset: str,
    data_path: Optional[str],
    download: bool,
    forget_set: str,
    forget_fraction: Optional[float],
    forget_count: Optional[int],
    forget_class: Optional[Union[int, str]],
    forget_indices_file: Optional[str],
    val_size: Union[int, float],
    stream: Optional[str],
    schedule: str,
    batch_size: int,
    eval_batch_size: Optional[int],
    num_workers: int,
    crop_padding: int,
    mean: Optional[list[float]],
    std: Optional[list[float]],
    **unchecked: Any,
) -> None:
    """Raise ValueError for argument problems that need no data (``unchecked``: arguments with nothing to check)."""

    def choice(name: str, value: Any, valid: Sequence[str]) -> None:
        if value not in valid:
            raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(valid)}.")

    choice("dataset", dataset, DATASETS)
    choice("forget_set", forget_set, FORGET_SETS)
    if schedule is not None:
        choice("schedule", schedule, SCHEDULES)
    if stream is not None:
        choice("stream", stream, STREAMS)
    if dataset == "image_folder" and data_path is None:
        raise ValueError(
            "dataset='image_folder' needs data_path: a folder with train/ and test/ class folders or an archive of one."
        )
    if dataset == "digits" and data_path is not None:
        raise ValueError("data_path is not used by dataset='digits' (embedded in scikit-learn); remove it.")
    if download and dataset not in ("cifar10", "cifar100", "svhn"):
        raise ValueError(f"download=True only applies to cifar10, cifar100 and svhn, not {dataset!r}; remove it.")
    scenario_args = {
        "random": ("forget_fraction", "forget_count"),
        "class": ("forget_class",),
        "indices": ("forget_indices_file",),
    }
    given = {
        "forget_fraction": forget_fraction,
        "forget_count": forget_count,
        "forget_class": forget_class,
        "forget_indices_file": forget_indices_file,
    }
    stray = [name for name, value in given.items() if value is not None and name not in scenario_args[forget_set]]
    if stray:
        raise ValueError(
            f"{', '.join(stray)} cannot be used with forget_set={forget_set!r}; remove it or change forget_set."
        )
    if forget_set == "random":
        if (forget_fraction is None) == (forget_count is None):
            raise ValueError(
                f"forget_set='random' needs exactly one of forget_fraction or forget_count; got "
                f"{'both' if forget_fraction is not None else 'neither'}."
            )
        if forget_fraction is not None and not 0.0 < forget_fraction < 1.0:
            raise ValueError(
                f"forget_fraction must be in (0, 1), got {forget_fraction}; use forget_count for a number of samples."
            )
        if forget_count is not None and (isinstance(forget_count, bool) or forget_count < 1):
            raise ValueError(f"forget_count must be a positive integer, got {forget_count}.")
    elif forget_set == "class" and forget_class is None:
        raise ValueError("forget_set='class' needs forget_class (a class name or index).")
    elif forget_set == "indices" and forget_indices_file is None:
        raise ValueError(
            "forget_set='indices' needs forget_indices_file (one training-set index per line or a JSON list)."
        )
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size must be an int (a count) or a float (a fraction), got {val_size!r}.")
    if isinstance(val_size, int) and val_size < 0 or isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise ValueError(f"val_size must be a count >= 0 or a fraction in [0, 1), got {val_size}.")
    minimums = (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("crop_padding", crop_padding, 0))
    for name, value, minimum in minimums:
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}.")
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
        raise ValueError("give mean and std together, with one value per image channel each.")
    if std is not None and any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {std}.")
