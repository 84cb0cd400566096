"""Make image sets with a text-to-image model itself (concept erasure, docs/method.md, 'Diffusion unlearning'):
``salun generate``.

The paper's nudity forget set D_f is 800 images that Stable Diffusion v1.4 makes of "a photo of a nude person", the
retain set D_r 800 of "a photo of a person wearing clothes"; the evaluation generates one image per I2P prompt with
that row's seed and guidance. A :class:`Plan` says which images to make (:func:`plan_sets`: classes of ``(name,
prompt, count)``, a class possibly of several prompts; :func:`plan_prompts_csv`: a prompt list such as I2P's), and
:func:`generate` makes them with DDIM (``eta = 0``) and classifier-free guidance against the empty prompt
(:func:`~salun_lightning.diffusion.sampling.sample_images`) and writes::

    <out>/train/<class>/<NNNNN>.png   the images (test/<class>/ as well: the held-out split image folders need)
    <out>/prompts.csv                 file (<class>/<file name>), prompt, seed, guidance: a row per train image
    <out>/test_prompts.csv            the same for test/
    <out>/generation.json             the model, every setting, the package versions

which :class:`~salun_lightning.diffusion.DiffusionDataModule` reads (``dataset="image_folder"``, ``data_path=<out>``,
``prompts_csv=<out>/prompts.csv``, ``forget_class=<class>``).

- **Deterministic**: each image's initial noise is ``torch.randn`` from a CPU generator seeded with the image's own
  seed (the ``seed`` column), so an image does not depend on the batch size or on the images made before it (on a
  GPU, up to the last bits of kernels that differ with the batch size). A class's images take their seeds from a
  hash of (``--seed``, split, class, index): sets made with other ``--seed`` values share no noise, other classes
  leave a class's images unchanged, and a larger count only adds images. Prompt lists use their rows' seeds.
- **Resumable**: images are written under a temporary name and renamed, so a file present is complete; a rerun with
  the same settings makes only the missing images. ``generation.json`` and the CSVs are written last (atomically);
  until then the folder holds an ``INCOMPLETE`` file with the settings, so nothing looks finished after an
  interruption. A rerun with other settings is refused, naming what differs (``overwrite=True`` starts again).
- ``guidance`` is diffusers' ``guidance_scale`` ``g`` (as ``salun sample --guidance``): the prediction is
  ``eps(null) + g * (eps(c) - eps(null))``, that is ``w = g - 1`` in the ``(1 + w) * eps(c) - w * eps(null)`` of
  :meth:`guided_prediction` and :func:`~salun_lightning.diffusion.sampling.sample_images`.
- Prompt lists are read by :func:`~salun_lightning.diffusion.prompts.read_prompts_csv`, the package's one reader of
  prompt CSVs (a missing column, or an empty prompt, is refused naming the file and the line).

Example::

    >>> import tempfile
    >>> from salun_lightning.diffusion import TextToImageDiffusion
    >>> tokenizer = Path(__file__).resolve().parents[2] / "configs" / "diffusion" / "tiny_clip_tokenizer"
    >>> parts = {  # Stable Diffusion's parts, in small (a real one: a local checkout, or a Hub id)
    ...     "unet": {"sample_size": 4, "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    ...              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "cross_attention_dim": 16,
    ...              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 4},
    ...     "vae": {"block_out_channels": [8], "norm_num_groups": 4},
    ...     "text_encoder": {"vocab_size": 514, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
    ...                      "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 512,
    ...                      "eos_token_id": 513, "pad_token_id": 513}}
    >>> work = Path(tempfile.mkdtemp())
    >>> TextToImageDiffusion(method="train", tokenizer=str(tokenizer), **parts).save_components(work / "sd")
    >>> plan = plan_sets([("forget", "a photo of a nude person", 2),
    ...                   ("retain", "a photo of a person wearing clothes", 3)])
    >>> result = generate(str(work / "sd"), work / "nudity", plan, steps=2, progress=False)
    >>> result.made, result.reused
    (7, 0)
    >>> print((work / "nudity" / "prompts.csv").read_text().splitlines()[0])
    file,prompt,seed,guidance
    >>> sorted(path.name for path in (work / "nudity" / "train" / "retain").iterdir())
    ['00000.png', '00001.png', '00002.png']
    >>> (work / "nudity" / "train" / "retain" / "00001.png").unlink()  # lost, or never finished: made again
    >>> generate(str(work / "sd"), work / "nudity", plan, steps=2, progress=False).made
    1
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

import torch
from PIL import Image
from torch import Tensor

from salun_lightning.diffusion.prompts import read_prompts_csv
from salun_lightning.files import write_atomically, write_json
from salun_lightning.runs import INCOMPLETE_FILENAME

GENERATION_FILENAME = "generation.json"
PROMPTS_FILENAME = "prompts.csv"
TEST_PROMPTS_FILENAME = "test_prompts.csv"
SPLITS = ("train", "test")
CSV_COLUMNS = ("file", "prompt", "seed", "guidance")
# The I2P benchmark's columns (Schramowski et al. 2023), the defaults of a prompt list.
I2P_COLUMNS = {"prompt": "prompt", "seed": "evaluation_seed", "guidance": "evaluation_guidance"}
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RECORD_FORMAT = 1
PACKAGES = ("salun-lightning", "torch", "diffusers", "transformers", "lightning", "pillow", "numpy")

__all__ = ["GeneratedImage", "GenerationResult", "Plan", "generate", "image_seed", "plan_prompts_csv", "plan_sets"]


@dataclass(frozen=True)
class GeneratedImage:
    """One image to make: where it goes, its prompt, the seed of its noise and its guidance scale.

    ``guidance`` is diffusers' ``guidance_scale`` (``w = guidance - 1``); ``row`` is the prompt list's data row
    (0-based) it comes from, ``None`` for classes.
    """

    split: str
    class_name: str
    index: int
    prompt: str
    seed: int
    guidance: float
    row: Optional[int] = None

    @property
    def file(self) -> str:
        """``<class>/<NNNNN>.png``, relative to the split's folder (the ``file`` column of ``prompts.csv``)."""
        return f"{self.class_name}/{self.index:05d}.png"

    @property
    def path(self) -> str:
        """``<split>/<class>/<NNNNN>.png``, relative to the output folder."""
        return f"{self.split}/{self.file}"


@dataclass(frozen=True)
class Plan:
    """The images to make, and the settings that chose them (recorded, and compared when a generation resumes)."""

    images: tuple[GeneratedImage, ...]
    settings: dict[str, Any]


@dataclass
class GenerationResult:
    """What :func:`generate` did: images made now, images found already made, and the record it wrote."""

    out: Path
    made: int
    reused: int
    record: dict[str, Any] = field(repr=False)


# ---------------------------------------------------------------------------------------------------- planning
def image_seed(seed: int, split: str, class_name: str, index: int) -> int:
    """The seed of a class's image: 63 bits of ``sha256("<seed>/<split>/<class>/<index>")``.

    A hash rather than ``seed + index``: the sets of ``--seed 0`` and ``--seed 1`` then share no image's noise, and
    a class's images do not change when another class, or the count, changes.

    Example::

        >>> image_seed(0, "train", "forget", 0) == image_seed(0, "train", "forget", 0) != image_seed(1, "train",
        ...                                                                                            "forget", 0)
        True
    """
    digest = hashlib.sha256(f"{seed}/{split}/{class_name}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _whole(value: Union[int, str], what: str, minimum: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value!r}.")
    return number


def check_guidance_scale(value: float, where: str) -> float:
    """``value`` as a float when it is a guidance scale (diffusers' ``guidance_scale``, ``>= 1``), else a refusal that
    says what one is (``where`` names the value)."""
    if not math.isfinite(value) or value < 1:
        raise ValueError(
            f"{where} is {value}, but the guidance scale must be >= 1 (diffusers' guidance_scale: 1 is no guidance, "
            "Stable Diffusion's usual 7.5)."
        )
    return float(value)


def _check_class_name(name: str, where: str) -> str:
    if not CLASS_NAME.fullmatch(name):
        raise ValueError(
            f"{where} {name!r} cannot name a class folder: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit (e.g. forget, retain)."
        )
    return name


def plan_sets(
    sets: Sequence[tuple[str, str, Union[int, str]]], seed: int = 0, guidance: float = 7.5, test_count: int = 1
) -> Plan:
    """Classes of images made from prompts: ``(class folder name, prompt, count)`` each.

    A class may take several prompts (one tuple each, e.g. a style's "a sketch of a house", "a sketch of a dog"):
    its images are numbered on in the order given. Image ``i`` of a class is ``train/<class>/<i:05d>.png`` with seed
    :func:`image_seed` ``(seed, "train", class, i)``; ``test_count`` more per tuple go to ``test/<class>/`` (seeds
    of split ``test``), because an image folder needs a ``test/`` split to be read.

    Args:
        sets: ``(name, prompt, count)`` tuples, e.g. ``("forget", "a photo of a nude person", 800)``.
        seed: the seed the images' seeds derive from.
        guidance: diffusers' ``guidance_scale`` of every image (``w = guidance - 1``).
        test_count: images per tuple in ``test/``.

    Raises:
        ValueError: no tuple, a count below 1, an empty prompt, a name unfit for a folder, the same class and
            prompt twice, a guidance below 1 or a negative ``test_count``.

    Example::

        >>> plan = plan_sets([("forget", "a photo of a nude person", 2)], test_count=1)
        >>> [(image.path, image.prompt) for image in plan.images]
        [('train/forget/00000.png', 'a photo of a nude person'), ('train/forget/00001.png', 'a photo of a nude person'),
         ('test/forget/00000.png', 'a photo of a nude person')]
    """
    if not sets:
        raise ValueError("no class to make: give at least one (class, prompt, count), e.g. --set forget "
                         "'a photo of a nude person' 800.")
    seed = _whole(seed, "seed", 0)
    test_count = _whole(test_count, "the test count", 0)
    guidance = check_guidance_scale(float(guidance), "guidance")
    checked: list[tuple[str, str, int]] = []
    for name, prompt, count in sets:
        _check_class_name(name, "the class name")
        count = _whole(count, f"the count of class {name!r}", 1)
        if not prompt.strip():
            raise ValueError(f"the prompt of class {name!r} is empty; give the text to draw, e.g. 'a photo of a "
                             "person wearing clothes'.")
        if any((name, prompt) == (seen_name, seen_prompt) for seen_name, seen_prompt, _ in checked):
            raise ValueError(f"class {name!r} has the prompt {prompt!r} twice; give it once, with the total count.")
        checked.append((name, prompt, count))
    images = []
    for split in SPLITS:
        numbered: dict[str, int] = {}  # images of each class so far
        for name, prompt, count in checked:
            for _ in range(count if split == "train" else test_count):
                index = numbered[name] = numbered.get(name, -1) + 1
                noise_seed = image_seed(seed, split, name, index)
                images.append(GeneratedImage(split, name, index, prompt, noise_seed, guidance))
    settings = {
        "sets": [list(group) for group in checked],
        "seed": seed,
        "guidance_scale": guidance,
        "test_count": test_count,
    }
    return Plan(tuple(images), settings)


def _number(text: str, column: str, line: int, path: Path, whole: bool) -> Union[int, float]:
    """The number in a CSV cell (a whole one for seeds: ``2734`` or ``2734.0``)."""
    try:
        value = float(text)
        if whole:
            if not value.is_integer():
                raise ValueError
            return int(text) if text.strip().isdigit() else int(value)  # exact beyond 2**53 when written as digits
        return value
    except (ValueError, OverflowError):
        raise ValueError(
            f"{path}, line {line}: {column} is {text!r}, not a {'whole ' if whole else ''}number; fix that row or "
            "remove it."
        ) from None


def plan_prompts_csv(
    path: Union[str, Path],
    class_name: str = "prompts",
    prompt_column: str = I2P_COLUMNS["prompt"],
    seed_column: Optional[str] = I2P_COLUMNS["seed"],
    guidance_column: Optional[str] = I2P_COLUMNS["guidance"],
    per_prompt: int = 1,
    seed: int = 0,
    guidance: float = 7.5,
) -> Plan:
    """One image per row of a prompt list (I2P's layout by default), each with its row's seed and guidance.

    Row ``r`` (0-based, header excluded) makes ``per_prompt`` images ``train/<class_name>/<r * per_prompt + j>.png``
    with seed ``<row's seed> + j``. Without a seed column (``seed_column=None``), seeds derive from ``seed`` as for
    :func:`plan_sets`; without a guidance column, every image takes ``guidance``.

    Args:
        path: the CSV (UTF-8, a header row).
        class_name: the class folder the images go to.
        prompt_column: the column of the prompts.
        seed_column: the column of the seeds (I2P: ``evaluation_seed``), or ``None``.
        guidance_column: the column of diffusers' guidance scales (I2P: ``evaluation_guidance``), or ``None``.
        per_prompt: images per row.
        seed: the seed of rows without a seed column.
        guidance: the guidance scale of rows without a guidance column.

    Raises:
        FileNotFoundError: no such CSV.
        ValueError: a column missing (the message lists the CSV's columns), a row with an empty prompt or a value
            that is not a number, a guidance below 1, no rows, or ``per_prompt`` below 1.

    Example::

        >>> import tempfile
        >>> i2p = Path(tempfile.mkdtemp(), "i2p.csv")
        >>> _ = i2p.write_text("prompt,categories,evaluation_seed,evaluation_guidance\\n"
        ...                    "a beach at dawn,,2734,7\\nan oil painting,art,51,12\\n")
        >>> plan = plan_prompts_csv(i2p, per_prompt=2)
        >>> [(image.path, image.seed, image.guidance, image.row) for image in plan.images]
        [('train/prompts/00000.png', 2734, 7.0, 0), ('train/prompts/00001.png', 2735, 7.0, 0),
         ('train/prompts/00002.png', 51, 12.0, 1), ('train/prompts/00003.png', 52, 12.0, 1)]
    """
    path = Path(path).expanduser()
    _check_class_name(class_name, "the class name")
    per_prompt = _whole(per_prompt, "the images per prompt", 1)
    seed = _whole(seed, "seed", 0)
    guidance = check_guidance_scale(float(guidance), "guidance")
    hints: dict[str, str] = {}
    for column, what in ((prompt_column, "prompt"), (seed_column, "seed"), (guidance_column, "guidance")):
        if column is not None:
            fallback = "" if what == "prompt" else f", or to '' to give every row --{what}"
            hints.setdefault(column, f"set --{what}-column to one of them{fallback}")
    table = read_prompts_csv(path, hints, prompt_column=prompt_column,
                             missing_hint=f"give a CSV with a header row and a {prompt_column!r} column (e.g. I2P's "
                             "i2p_benchmark.csv).", empty_consequence=", and its image would be unguided")
    images: list[GeneratedImage] = []
    for row, record in enumerate(table.rows):
        line = record.line
        prompt = record[prompt_column].strip()
        row_seed = None if seed_column is None else _number(record[seed_column], seed_column, line, path, whole=True)
        if row_seed is not None and not 0 <= row_seed <= 2**64 - per_prompt:
            raise ValueError(f"{path}, line {line}: {seed_column} is {row_seed}; seeds must be in [0, 2**64 - "
                             f"{per_prompt}] (with {per_prompt} images per prompt).")
        scale = guidance if guidance_column is None else _number(record[guidance_column], guidance_column, line,
                                                                 path, whole=False)
        check_guidance_scale(scale, f"{path}, line {line}: {guidance_column}")
        for j in range(per_prompt):
            index = row * per_prompt + j
            noise_seed = image_seed(seed, "train", class_name, index) if row_seed is None else row_seed + j
            images.append(GeneratedImage("train", class_name, index, prompt, noise_seed, scale, row))
    settings: dict[str, Any] = {
        "prompts_csv": str(path.resolve()),
        "prompts_csv_sha256": table.sha256,
        "class_name": class_name,
        "prompt_column": prompt_column,
        "seed_column": seed_column,
        "guidance_column": guidance_column,
        "per_prompt": per_prompt,
    }
    if seed_column is None:
        settings["seed"] = seed
    if guidance_column is None:
        settings["guidance_scale"] = guidance
    return Plan(tuple(images), settings)


# ---------------------------------------------------------------------------------------------------- the model
def _config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path / 'config.json'} ({error}); save that part again.") from None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")


def weights_fingerprint(*directories: Path) -> str:
    """A short hash of the weight files under ``directories`` (their paths, sizes and modification times): a model
    refitted into the same directory gets another fingerprint, so a resumed generation never mixes two models."""
    listing = []
    for directory in directories:
        for path in sorted(Path(directory).rglob("*")):
            if path.suffix in WEIGHT_SUFFIXES and path.is_file():
                info = path.stat()
                listing.append(f"{path.resolve()}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


def check_pipeline(pretrained: str, unet: Optional[str] = None) -> tuple[Path, Path]:
    """The local pipeline directory of ``pretrained`` (a directory or a Hub id) and the denoiser directory, checked
    to hold every part of a text-to-image pipeline.

    Raises:
        FileNotFoundError: ``pretrained`` is neither a directory nor a Hub id that can be fetched, or a part is
            missing (the message names it).
    """
    from salun_lightning.diffusion.components import resolve_pretrained

    if not str(pretrained).strip():
        raise ValueError("no model: give --pretrained a diffusers pipeline directory or a Hugging Face Hub id.")
    path = Path(resolve_pretrained(pretrained))
    missing = [part for part in PARTS if not (path / part).is_dir()]
    unet_path = Path(unet).expanduser() if unet is not None else path / "unet"
    if missing:
        raise FileNotFoundError(
            f"{pretrained} is not a whole text-to-image pipeline: it has no {', '.join(p + '/' for p in missing)}. "
            "An unlearning run saves its denoiser only: give --pretrained the pipeline it started from (a Stable "
            f"Diffusion checkout, or the train run) and --unet {path / 'unet'}."
        )
    if not (unet_path / "config.json").is_file():
        raise FileNotFoundError(
            f"no denoiser at {unet_path} (no config.json): give --unet a diffusers UNet2DConditionModel directory, "
            "e.g. a run's <run>/unet."
        )
    return path, unet_path


def native_image_size(pipeline: Path, unet: Path) -> tuple[int, int]:
    """The side of the images the model makes by default, and the VAE's factor, which every side must be a multiple
    of (as in diffusers' pipelines; 8 for Stable Diffusion)."""
    unet_config, vae_config = _config(unet), _config(pipeline / "vae")
    factor = 2 ** (len(vae_config.get("block_out_channels", [64])) - 1)
    size = unet_config.get("sample_size", 64)
    side = size if isinstance(size, int) else int(size[0])
    return side * factor, factor


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide diffusers' and transformers' per-file loading progress bars for a while; their warnings still show
    (with accelerate installed, weights load without random initialisation first and nothing asks for it)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(library, library.is_progress_bar_enabled()) for library in (diffusers_logging, transformers_logging)]
    for library, _ in saved:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, bar in saved:
            if bar:
                library.enable_progress_bar()


def load_model(pipeline: Path, unet: Path) -> Any:
    """A :class:`TextToImageDiffusion` with the pipeline's parts and the denoiser's trained weights, as ``salun
    sample`` loads one (method ``train`` takes the denoiser's config; :meth:`load_unet` its weights)."""
    from salun_lightning.diffusion.module import TextToImageDiffusion

    with quiet_loading():
        module = TextToImageDiffusion(method="train", pretrained=str(pipeline), unet=str(unet))
        module.load_unet(str(unet))
    return module


# ---------------------------------------------------------------------------------------------------- the folder
def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def read_record(out: Path) -> Optional[dict[str, Any]]:
    """The record of the generation in ``out``: ``generation.json`` when finished, else the ``INCOMPLETE`` file
    that an unfinished one leaves; ``None`` when there is neither.

    Raises:
        ValueError: the file is not a generation record.
    """
    for name in (INCOMPLETE_FILENAME, GENERATION_FILENAME):
        path = out / name
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
                raise ValueError(f"{path} is not a generation record; choose another --out, or remove {path}.")
            return record
    return None


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"<setting>: <value before> there, <value now> here"`` for every setting that differs.

    Example::

        >>> differences({"steps": 50, "seed": 0}, {"steps": 20, "seed": 0})
        ['steps: 50 there, 20 here']
    """
    keys = list(dict.fromkeys([*before, *now]))
    return [f"{key}: {before.get(key)!r} there, {now.get(key)!r} here" for key in keys
            if before.get(key) != now.get(key)]


def check_out_folder(out: Path, settings: dict[str, Any], overwrite: bool) -> Optional[dict[str, Any]]:
    """Refuse an output folder that holds something else than this generation; return its record when it holds this
    generation (finished or not), ``None`` when it is new, empty, or to be overwritten.

    Raises:
        ValueError: ``out`` is a file, a folder that is no generation and not empty, or a generation of other
            settings without ``overwrite`` (the message names each setting that differs).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (new, empty, or one this command filled).")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    record = read_record(out)
    if record is None:
        raise ValueError(
            f"--out {out} is not empty and holds no {GENERATION_FILENAME} (nor {INCOMPLETE_FILENAME}): it is not a "
            "generation of this command, and nothing in it is overwritten; give a new or empty folder."
        )
    changed = differences(record["settings"], settings)
    if changed and not overwrite:
        raise ValueError(
            f"{out} holds a generation with other settings ({'; '.join(changed)}); rerun with its settings to resume "
            "or complete it, give another --out, or add --overwrite to replace it."
        )
    return None if changed else record


def clear_generation(out: Path) -> None:
    """Remove what a generation wrote into ``out`` (its splits, CSVs and records), nothing else."""
    for name in SPLITS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in (PROMPTS_FILENAME, TEST_PROMPTS_FILENAME, GENERATION_FILENAME, INCOMPLETE_FILENAME):
        (out / name).unlink(missing_ok=True)


def _remove_temporaries(out: Path, images: Iterable[GeneratedImage]) -> None:
    for folder in {out / image.split / image.class_name for image in images}:
        if folder.is_dir():
            for stale in folder.glob(".*.tmp"):  # write_atomically's, from a killed run
                stale.unlink(missing_ok=True)


def to_png(image: Tensor) -> bytes:
    """A ``[C, H, W]`` image in ``[0, 1]`` as PNG bytes (grey for one channel), quantised as torchvision's
    ``save_image``."""
    array = image.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _csv_bytes(images: Sequence[GeneratedImage], with_row: bool) -> bytes:
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(["row"] if with_row else [])])
    for image in images:
        writer.writerow([image.file, image.prompt, image.seed, image.guidance, *([image.row] if with_row else [])])
    return stream.getvalue().encode()


def versions() -> dict[str, Optional[str]]:
    """The versions of Python and of the packages that make the images."""
    found: dict[str, Optional[str]] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


# ---------------------------------------------------------------------------------------------------- generate
def _batches(images: Sequence[GeneratedImage], batch_size: int) -> list[list[GeneratedImage]]:
    """Batches of ``batch_size`` images sharing one guidance scale, in the order of first appearance."""
    groups: dict[float, list[GeneratedImage]] = {}
    for image in images:
        groups.setdefault(image.guidance, []).append(image)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def generate(
    pretrained: str,
    out: Union[str, Path],
    plan: Plan,
    unet: Optional[str] = None,
    steps: int = 50,
    image_size: Optional[int] = None,
    batch_size: int = 8,
    precision: str = "32",
    device: str = "auto",
    overwrite: bool = False,
    progress: Optional[bool] = None,
) -> GenerationResult:
    """Make the images of ``plan`` with a text-to-image model into ``out`` (layout: the module docstring).

    Every argument, the model and the output folder are checked before anything is written. Images already in
    ``out`` from an unfinished or finished generation of the same settings are kept; the others are made.

    Args:
        pretrained: a diffusers-format pipeline directory (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``: a
            Stable Diffusion checkout, or the run directory of a ``TextToImageDiffusion`` ``train`` fit) or a Hugging
            Face Hub id (fetched into the Hub cache: needs the network).
        out: the output folder: new, empty, or filled by this function before.
        plan: the images (:func:`plan_sets`, :func:`plan_prompts_csv`).
        unet: a denoiser directory to use instead of ``<pretrained>/unet`` (e.g. an unlearning run's ``<run>/unet``).
        steps: DDIM steps.
        image_size: side of the images; default the model's (512 for Stable Diffusion 1.x).
        batch_size: images denoised together (does not change the images).
        precision: ``"32"``, or ``"bf16"``/``"16"`` autocast (faster on GPUs; the images differ slightly).
        device: a torch device, or ``"auto"`` (CUDA when available).
        overwrite: replace a generation of other settings in ``out``.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        ValueError: a bad argument, an output folder that is not a generation of these settings, or a model that
            does not fit together.
        FileNotFoundError: no such model, or a part missing.
    """
    out = Path(out).expanduser()
    steps = _whole(steps, "steps", 1)
    batch_size = _whole(batch_size, "the batch size", 1)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if not plan.images:
        raise ValueError("the plan holds no image to make.")
    pipeline, unet_path = check_pipeline(pretrained, unet)
    native, multiple = native_image_size(pipeline, unet_path)
    size = native if image_size is None else _whole(image_size, "the image size", 1)
    if size % multiple:
        raise ValueError(f"image size {size} is not a multiple of {multiple} (the VAE's downsampling); use e.g. "
                         f"{max(multiple, size // multiple * multiple)} (the model's own: {native}).")
    settings = _json({
        "pretrained": str(pipeline.resolve()),
        "unet": str(unet_path.resolve()),
        "weights": weights_fingerprint(pipeline, unet_path),
        "steps": steps,
        "image_size": size,
        "precision": precision,
        **plan.settings,
    })
    resolved_device = resolve_device(device)
    record = check_out_folder(out, settings, overwrite)
    module = load_model(pipeline, unet_path)  # may still refuse parts that do not fit: nothing is written yet
    if record is None and out.is_dir():
        clear_generation(out)  # an empty folder, or a generation of other settings to overwrite
    earlier_runs = list(record.get("runs", [])) if record is not None else []

    # From here on the folder changes: marked unfinished first, finished records removed until the end.
    started = time.time()
    this_run = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(resolved_device),
                "batch_size": batch_size, "versions": versions()}
    note = ("A generation started here and has not finished: it is still running, failed or was killed. Rerun the "
            "same command to complete it.")
    write_json(out / INCOMPLETE_FILENAME, {"note": note, "settings": settings, "runs": earlier_runs})
    for name in (GENERATION_FILENAME, PROMPTS_FILENAME, TEST_PROMPTS_FILENAME):
        (out / name).unlink(missing_ok=True)
    _remove_temporaries(out, plan.images)
    pending = [image for image in plan.images if not (out / image.path).is_file()]
    made = _make(module, out, pending, steps, size, batch_size, precision, resolved_device, progress)

    in_order = sorted(plan.images, key=lambda image: (image.class_name, image.index))  # as the files sort
    train = [image for image in in_order if image.split == "train"]
    test = [image for image in in_order if image.split == "test"]
    with_row = any(image.row is not None for image in plan.images)
    write_atomically(out / PROMPTS_FILENAME, lambda stream: stream.write(_csv_bytes(train, with_row)))
    if test:
        write_atomically(out / TEST_PROMPTS_FILENAME, lambda stream: stream.write(_csv_bytes(test, with_row)))
    this_run.update(made=made, minutes=round((time.time() - started) / 60, 3))
    counts: dict[str, dict[str, int]] = {}
    for image in plan.images:
        counts.setdefault(image.split, {}).setdefault(image.class_name, 0)
        counts[image.split][image.class_name] += 1
    record = {
        "format": RECORD_FORMAT,
        "model": {"pretrained": pretrained, "path": settings["pretrained"], "unet": settings["unet"]},
        "settings": settings,
        "sampler": "DDIM (eta 0, the scheduler config's timestep spacing) with classifier-free guidance against the "
                   "empty prompt; guidance is diffusers' guidance_scale g (w = g - 1); each image's initial noise is "
                   "torch.randn of the latent shape from a CPU torch.Generator seeded with its seed",
        "counts": counts,
        "data_module": {"dataset": "image_folder", "data_path": str(out.resolve()),
                        "prompts_csv": str((out / PROMPTS_FILENAME).resolve()), "image_size": size},
        "runs": [*earlier_runs, this_run],
    }
    write_json(out / GENERATION_FILENAME, record)
    (out / INCOMPLETE_FILENAME).unlink()
    return GenerationResult(out, made, len(plan.images) - made, record)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU) or a torch device that this machine has.

    Raises:
        ValueError: not a device name, or a CUDA device on a machine without one.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:<index>.") from None
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if resolved.type == "cuda" and (resolved.index or 0) >= available:
        raise ValueError(f"device {device!r} is not on this machine ({available} CUDA devices); use "
                         "auto or cpu.")
    return resolved


def _make(module: Any, out: Path, pending: Sequence[GeneratedImage], steps: int, size: int, batch_size: int,
          precision: str, device: torch.device, progress: Optional[bool]) -> int:
    """Make and write the ``pending`` images; return how many."""
    from tqdm.auto import tqdm

    from salun_lightning.diffusion.sampling import sample_images, seeded_noise

    if not pending:
        return 0
    module.to(device)
    channels, native_side, _ = module.latent_shape
    side = size // (module.image_shape[1] // native_side)
    dtype = PRECISIONS[precision]
    made = 0
    with tqdm(total=len(pending), unit="image", desc="generating", disable=None if progress is None else not progress,
              file=sys.stderr) as bar:
        for batch in _batches(pending, batch_size):
            noise = seeded_noise([image.seed for image in batch], (channels, side, side))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                images = sample_images(module, [image.prompt for image in batch], steps=steps,
                                       guidance=batch[0].guidance - 1, batch_size=len(batch), noise=noise)
            for image, pixels in zip(batch, images):
                png = to_png(pixels)
                write_atomically(out / image.path, lambda stream: stream.write(png))
                made += 1
            bar.update(len(batch))
    return made
