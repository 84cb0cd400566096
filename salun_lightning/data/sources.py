"""Image classification sources, decoded once into uint8 tensors ``[N, C, H, W]``.

Sources:

- ``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images, no download). Pixel values 0..16 are
  scaled to 0..255 (``round(v * 255 / 16)``). The set has no official test split: within every class, every fifth
  sample (positions 4, 9, 14, ... in file order) is the test set (355 images), the rest the training set (1,442).
- ``cifar10``, ``cifar100``, ``svhn``: torchvision's own files under a root folder (``download`` fetches them).
- ``image_folder``: a directory, or a ``.tar`` (also ``.gz``, ``.bz2``, ``.xz``) or ``.zip`` archive of one, that holds
  (at any depth, in exactly one folder) ``train/<class>/<image>`` and ``test/<class>/<image>``. Classes are the
  sorted ``train`` folder names; images are ordered by their path relative to the split folder, as torchvision's
  ``ImageFolder`` orders them, so an index means the same image every time. All images must share one size; they
  are converted to grey (one channel) when the first training image has a single band, else to RGB. The decoded
  tensors are cached in ``cache_dir`` as safetensors, keyed by the archive's sha256 (or, for a directory, a hash of
  the image files' relative paths, sizes and modification times); nothing is ever written beside the source.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from salun_lightning.files import write_atomically

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "image_folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
CACHE_FORMAT = "1"  # bump when decoding changes, so that old cache files are not reused

_CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
_CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
_DIGIT_CLASSES = [str(d) for d in range(10)]


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a named dataset without loading it (mean and std on the ``[0, 1]`` scale)."""

    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    # digits: statistics of the 1,442 training images after scaling to 0..255
    "digits": DatasetInfo(tuple(_DIGIT_CLASSES), (1, 8, 8), (0.3052,), (0.3760,)),
    "cifar10": DatasetInfo(tuple(_CIFAR10_CLASSES), (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(
        tuple(_CIFAR100_CLASSES), (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    # SVHN's std as the reference code normalises with it (earlier versions here used 0.1980, 0.2010, 0.1970).
    "svhn": DatasetInfo(tuple(_DIGIT_CLASSES), (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1201, 0.1231, 0.1052)),
}

_TORCHVISION_FILES = {
    "cifar10": [f"cifar-10-batches-py/{name}" for name in ("batches.meta", "test_batch")]
    + [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
    "cifar100": [f"cifar-100-python/{name}" for name in ("meta", "train", "test")],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
}


@dataclass(frozen=True)
class ImageData:
    """A decoded classification set: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` per split."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: tuple[str, ...]

    def check(self, source: str) -> None:
        """Raise ValueError when the tensors are inconsistent (wrong dtype, shape or label range)."""
        problems = []
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4 or labels.dtype != torch.int64 or labels.dim() != 1:
                problems.append(f"{split}: images {images.dtype} {tuple(images.shape)}, labels {labels.dtype}")
            elif len(images) != len(labels) or len(images) == 0:
                problems.append(f"{split}: {len(images)} images but {len(labels)} labels")
            elif int(labels.min()) < 0 or int(labels.max()) >= len(self.class_names):
                problems.append(f"{split}: labels outside 0..{len(self.class_names) - 1}")
        if not problems and self.train_images.shape[1:] != self.test_images.shape[1:]:
            shapes = tuple(self.train_images.shape[1:]), tuple(self.test_images.shape[1:])
            problems.append(f"train images {shapes[0]} but test images {shapes[1]}")
        if problems:
            raise ValueError(f"bad image data from {source}: " + "; ".join(problems))


def default_cache_dir() -> Path:
    """``$SALUN_CACHE`` when set, else ``~/.cache/salun_lightning``."""
    return Path(os.environ.get("SALUN_CACHE") or Path.home() / ".cache" / "salun_lightning").expanduser()


# ---------------------------------------------------------------------------------------------------- digits
def load_digits_data() -> ImageData:
    """Return scikit-learn's digits with the fixed per-class split described in the module docstring."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for label in range(10):
        is_test[torch.nonzero(labels == label).flatten()[4::5]] = True
    train, test = ~is_test, is_test
    return ImageData(
        images[train].contiguous(), labels[train], images[test].contiguous(), labels[test], tuple(_DIGIT_CLASSES)
    )


# ---------------------------------------------------------------------------------------------------- torchvision
def check_torchvision_files(name: str, root: Path) -> None:
    """Raise FileNotFoundError naming the missing files and how to get them."""
    missing = [str(root / rel) for rel in _TORCHVISION_FILES[name] if not (root / rel).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} is not in {root}: missing {', '.join(missing)}. Pass download=True (in YAML: "
            f"`data.init_args.download: true`) on a machine with internet to fetch torchvision's files into that "
            f"folder, or set data_path to the folder that holds them. An image-folder copy (for example "
            f"cifar10-jpg.tar.gz) is read with dataset='image_folder' instead."
        )


def download_torchvision(name: str, root: Path) -> None:
    """Download both splits of ``name`` into ``root`` with torchvision (skipped for files already there)."""
    for split in ("train", "test"):
        _torchvision_split(name, root, split, download=True)


def load_torchvision_data(name: str, root: Path) -> ImageData:
    """Read ``cifar10``, ``cifar100`` or ``svhn`` from torchvision's files in ``root`` (never downloads)."""
    check_torchvision_files(name, root)
    splits = {split: _torchvision_split(name, root, split, download=False) for split in ("train", "test")}
    class_names = tuple(getattr(splits["train"], "classes", _DIGIT_CLASSES))
    tensors = []
    for split in ("train", "test"):
        dataset = splits[split]
        images = torch.from_numpy(np.ascontiguousarray(dataset.data))
        if name != "svhn":  # CIFAR arrays are [N, H, W, C]; SVHN's are already [N, C, H, W]
            images = images.permute(0, 3, 1, 2).contiguous()
        labels = dataset.labels if name == "svhn" else dataset.targets
        tensors += [images, torch.as_tensor(np.asarray(labels), dtype=torch.int64)]
    return ImageData(*tensors, class_names)


def _torchvision_split(name: str, root: Path, split: str, download: bool):
    from torchvision import datasets

    try:
        if name == "svhn":
            return datasets.SVHN(str(root), split=split, download=download)
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        return cls(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise ValueError(
            f"torchvision could not read {name} ({split}) from {root}: {err}. The files may be corrupt: delete them "
            f"and download again with download=True."
        ) from err


# ---------------------------------------------------------------------------------------------------- image folder
def prepare_source(name: str, data_path: Optional[Path], cache_dir: Path, download: bool) -> None:
    """Download a torchvision set (``download=True``) or check its files; decode and cache an image folder."""
    if name == "image_folder":
        load_image_folder_data(data_path, cache_dir)
    elif name != "digits":
        if download:
            download_torchvision(name, data_path)
        check_torchvision_files(name, data_path)


def load_source(name: str, data_path: Optional[Path], cache_dir: Path) -> ImageData:
    """Load a data source by name (``digits``, ``image_folder`` or a torchvision set) and check its contents."""
    if name == "digits":
        data = load_digits_data()
    elif name == "image_folder":
        data = load_image_folder_data(data_path, cache_dir)
    else:
        data = load_torchvision_data(name, data_path)
    data.check(name if data_path is None else str(data_path))
    return data


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a supported archive (by suffix)."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def source_fingerprint(path: Path) -> str:
    """The sha256 of an archive, or for a directory a sha256 of its image files' relative paths, sizes, mtimes."""
    digest = hashlib.sha256()
    if path.is_dir():
        for rel, file in sorted(directory_images(path)):
            stat = file.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return "dir:" + digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def cache_file(path: Path, cache_dir: Path) -> Path:
    """Where the decoded tensors of the image folder or archive ``path`` are cached."""
    key = hashlib.sha256(f"image_folder:v{CACHE_FORMAT}:{source_fingerprint(path)}".encode()).hexdigest()
    stem = path.name.split(".")[0] or "image_folder"
    return cache_dir / f"{stem}-{key[:24]}.safetensors"


def check_image_folder_path(path: Path) -> None:
    """Raise FileNotFoundError (or ValueError for an unsupported file) when ``path`` cannot be an image folder."""
    if not path.exists():
        raise FileNotFoundError(
            f"image folder not found: {path} does not exist. Set data_path to a directory holding train/<class>/ and "
            f"test/<class>/ image folders, or to a {'/'.join(ARCHIVE_SUFFIXES)} archive of one."
        )
    if not path.is_dir() and not is_archive(path):
        raise ValueError(
            f"{path} is neither a directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive; set data_path to an image "
            f"folder or an archive of one."
        )


def load_image_folder_data(path: Union[str, Path], cache_dir: Union[str, Path]) -> ImageData:
    """Return the decoded image folder, from the cache when present, else decoding it once and caching it."""
    path, cache_dir = Path(path).expanduser(), Path(cache_dir).expanduser()
    check_image_folder_path(path)
    target = cache_file(path, cache_dir)
    if target.is_file():
        try:
            return _read_cache(target)
        except (OSError, ValueError, SafetensorError) as err:
            rank_zero_warn(f"ignoring the unreadable cache file {target} ({err}); decoding {path} again.")
    data = decode_image_folder(path)
    try:
        _write_cache(target, data, path)
    except OSError as err:
        rank_zero_warn(f"could not write the image cache {target} ({err}); the images will be decoded again next time.")
    return data


def decode_image_folder(path: Path) -> ImageData:
    """Decode every image of an image folder or archive into uint8 tensors (no caching)."""
    start = time.perf_counter()
    if path.is_dir():
        entries: dict[str, Union[bytes, Path]] = dict(directory_images(path))
    else:
        entries = dict(_archive_images(path))
    root, splits = find_layout(entries, path)
    class_names = sorted({cls for _, cls in splits["train"]})
    unknown = sorted({cls for _, cls in splits["test"]} - set(class_names))
    if unknown:
        raise ValueError(f"{path}: test classes {unknown} have no train folder; train classes are {class_names}.")
    label_of = {name: i for i, name in enumerate(class_names)}
    total = len(splits["train"]) + len(splits["test"])
    rank_zero_info(f"Decoding {total:,} images from {path}{f' ({root}/)' if root else ''} once; they will be cached.")
    mode = None
    tensors = []
    for split in ("train", "test"):
        items = sorted(splits[split])
        labels = torch.tensor([label_of[cls] for _, cls in items], dtype=torch.int64)
        images, mode = _decode_all([entries[rel] for rel, _ in items], [rel for rel, _ in items], mode, path)
        tensors += [images, labels]
    rank_zero_info(f"Decoded {total:,} images from {path} in {time.perf_counter() - start:.1f} s.")
    return ImageData(*tensors, tuple(class_names))


def is_image(rel: str) -> bool:
    """Whether an archive or folder entry is an image file (by suffix; hidden and macOS metadata files excluded)."""
    name = PurePosixPath(rel).name
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".") and "__MACOSX" not in rel


def directory_images(path: Path) -> Iterator[tuple[str, Path]]:
    """``(relative POSIX path, file)`` of every image below ``path``."""
    for dirpath, _, filenames in os.walk(path):
        for filename in filenames:
            file = Path(dirpath) / filename
            rel = file.relative_to(path).as_posix()
            if is_image(rel):
                yield rel, file


def _archive_images(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir() and is_image(info.filename):
                    yield info.filename, archive.read(info)
        return
    with tarfile.open(path, "r|*") as archive:  # one sequential pass, members read straight from the stream
        for member in archive:
            if member.isfile() and is_image(member.name):
                yield member.name, archive.extractfile(member).read()


def find_layout(entries: dict, source: Path) -> tuple[str, dict[str, list[tuple[str, str]]]]:
    """Find the one folder holding ``train/<class>/<image>`` and ``test/<class>/<image>``."""
    found: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: {"train": [], "test": []})
    for rel in entries:
        parts = PurePosixPath(rel.removeprefix("./")).parts
        if len(parts) >= 3 and parts[-3] in ("train", "test"):
            found["/".join(parts[:-3])][parts[-3]].append((rel, parts[-2]))
    complete = sorted(root for root, splits in found.items() if splits["train"] and splits["test"])
    if not complete:
        raise ValueError(
            f"no folder in {source} holds both train/<class>/<image> and test/<class>/<image> files "
            f"({len(entries)} image files seen). Arrange the images as [<folder>/]train/<class>/<image> and "
            f"[<folder>/]test/<class>/<image>."
        )
    if len(complete) > 1:
        shown = ", ".join(repr(root or ".") for root in complete)
        raise ValueError(f"several folders in {source} hold train/ and test/ image folders ({shown}); keep only one.")
    return complete[0], found[complete[0]]


def _decode_all(
    sources: list[Union[bytes, Path]], names: list[str], mode: Optional[str], origin: Path
) -> tuple[Tensor, Optional[str]]:
    out: Optional[np.ndarray] = None
    for i, (data, name) in enumerate(zip(sources, names)):
        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                if mode is None:
                    mode = "L" if len(image.getbands()) == 1 and image.mode != "P" else "RGB"
                array = np.asarray(image.convert(mode))
        except (OSError, ValueError) as err:
            raise ValueError(f"{origin}: cannot decode {name} ({err}); remove or replace that file.") from err
        if out is None:
            height, width = array.shape[:2]
            out = np.empty((len(sources), 1 if mode == "L" else 3, height, width), dtype=np.uint8)
        if array.shape[:2] != out.shape[2:]:
            raise ValueError(
                f"{origin}: {name} is {array.shape[1]}x{array.shape[0]} but the images before it are "
                f"{out.shape[3]}x{out.shape[2]}; all images of an image folder must share one size."
            )
        out[i] = array[None] if mode == "L" else array.transpose(2, 0, 1)
        if (i + 1) % 20000 == 0:
            rank_zero_info(f"  decoded {i + 1:,} of {len(sources):,}")
    return torch.from_numpy(out), mode


def _write_cache(target: Path, data: ImageData, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "train_images": data.train_images.contiguous(),
        "train_labels": data.train_labels.contiguous(),
        "test_images": data.test_images.contiguous(),
        "test_labels": data.test_labels.contiguous(),
    }
    metadata = {"format": CACHE_FORMAT, "class_names": json.dumps(list(data.class_names)), "source": str(source)}
    write_atomically(target, lambda stream: stream.write(save(tensors, metadata=metadata)))


def _read_cache(target: Path) -> ImageData:
    with safe_open(str(target), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {metadata.get('format')!r}, expected {CACHE_FORMAT!r}")
        keys = ("train_images", "train_labels", "test_images", "test_labels")
        tensors = {key: handle.get_tensor(key) for key in keys}
    data = ImageData(**tensors, class_names=tuple(json.loads(metadata["class_names"])))
    data.check(str(target))
    return data
