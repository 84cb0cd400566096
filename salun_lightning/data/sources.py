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
- ``tinyimagenet``: the unpacked ``tiny-imagenet-200`` folder of the official release (``data_path`` names it, or a
  folder holding it; nothing downloads). Classes are the sorted wnids of the ``train/<wnid>/`` folders, the order of
  torchvision's ``ImageFolder`` over ``train/`` (what the reference code reads), and also the class names; a
  ``wnids.txt``, when present, must list the same wnids. The training split is ``train/<wnid>/images/*.JPEG`` (100,000
  images), ordered by path; the test split is ``val/images/*`` (10,000), ordered by file name and labelled by
  ``val/val_annotations.txt`` (tab-separated: file name, wnid, box), since the official ``test/`` split has no
  labels. Every image must be 64x64; grey JPEGs (the release has some) are converted to RGB. The layout is checked
  before anything is decoded; the decoded tensors are cached like an image folder's, keyed also by the contents of
  ``val_annotations.txt`` and ``wnids.txt``.
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
from collections.abc import Callable, Iterator, Sequence
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

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "tinyimagenet", "image_folder")
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
TINYIMAGENET_FOLDER = "tiny-imagenet-200"
TINYIMAGENET_SIZE = (64, 64)  # (height, width) of every TinyImageNet image


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
    """Download a torchvision set (``download=True``) or check its files; decode and cache an image folder or
    TinyImageNet."""
    if name == "image_folder":
        load_image_folder_data(data_path, cache_dir)
    elif name == "tinyimagenet":
        load_tinyimagenet_data(data_path, cache_dir)
    elif name != "digits":
        if download:
            download_torchvision(name, data_path)
        check_torchvision_files(name, data_path)


def load_source(name: str, data_path: Optional[Path], cache_dir: Path) -> ImageData:
    """Load a data source by name (one of :data:`DATASETS`) and check its contents."""
    if name == "digits":
        data = load_digits_data()
    elif name == "image_folder":
        data = load_image_folder_data(data_path, cache_dir)
    elif name == "tinyimagenet":
        data = load_tinyimagenet_data(data_path, cache_dir)
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


def cache_file(path: Path, cache_dir: Path, kind: str = "image_folder", key_files: Sequence[Path] = ()) -> Path:
    """Where the decoded tensors of ``path`` (an image folder or archive, or the folder of another ``kind`` of
    source) are cached; the contents of ``key_files`` (label files) are part of the key."""
    digest = hashlib.sha256(f"{kind}:v{CACHE_FORMAT}:{source_fingerprint(path)}".encode())
    for file in key_files:
        digest.update(file.read_bytes())
    stem = path.name.split(".")[0] or kind
    return cache_dir / f"{stem}-{digest.hexdigest()[:24]}.safetensors"


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
    return _load_cached(cache_file(path, cache_dir), path, lambda: decode_image_folder(path))


def _load_cached(target: Path, source: Path, decode: Callable[[], ImageData]) -> ImageData:
    """The data in the cache file ``target`` when it is readable, else ``decode()``, then written there."""
    if target.is_file():
        try:
            return _read_cache(target)
        except (OSError, ValueError, SafetensorError) as err:
            rank_zero_warn(f"ignoring the unreadable cache file {target} ({err}); decoding {source} again.")
    data = decode()
    try:
        _write_cache(target, data, source)
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
    sources: list[Union[bytes, Path]],
    names: list[str],
    mode: Optional[str],
    origin: Path,
    size: Optional[tuple[int, int]] = None,
) -> tuple[Tensor, Optional[str]]:
    """Decode ``sources`` into uint8 ``[N, C, H, W]`` in ``mode`` ("L" or "RGB"; ``None``: grey when the first
    image has one band, else RGB), all of ``size`` (height, width; ``None``: the first image's)."""
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
            height, width = size or array.shape[:2]
            out = np.empty((len(sources), 1 if mode == "L" else 3, height, width), dtype=np.uint8)
        if array.shape[:2] != out.shape[2:]:
            expected = f"{out.shape[3]}x{out.shape[2]}"
            reason = (
                f"the images before it are {expected}; all images of an image folder must share one size"
                if size is None
                else f"every image of this data set is {expected}; replace it with the release's original file"
            )
            raise ValueError(f"{origin}: {name} is {array.shape[1]}x{array.shape[0]} but {reason}.")
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


# ---------------------------------------------------------------------------------------------------- tinyimagenet
def tinyimagenet_root(path: Path) -> Path:
    """The ``tiny-imagenet-200`` folder: ``path/tiny-imagenet-200`` when ``path`` holds one, else ``path`` itself.

    Raises:
        FileNotFoundError: a file of the layout is missing; the message names it and the fix.
    """
    root = path / TINYIMAGENET_FOLDER if (path / TINYIMAGENET_FOLDER).is_dir() else path
    required = (root / "train", root / "val" / "images", root / "val" / "val_annotations.txt")
    missing = [str(file) for file in required if not file.exists()]
    if missing:
        raise FileNotFoundError(
            f"tinyimagenet is not in {path}: missing {', '.join(missing)}. Set data_path to the unpacked "
            f"{TINYIMAGENET_FOLDER} folder of the official release ({TINYIMAGENET_FOLDER}.zip, with "
            f"train/<wnid>/images/, val/images/ and val/val_annotations.txt) or to the folder holding it; nothing is "
            f"downloaded."
        )
    return root


def load_tinyimagenet_data(path: Union[str, Path], cache_dir: Union[str, Path]) -> ImageData:
    """Return TinyImageNet (see the module docstring), from the cache when present, else decoding it once."""
    root = tinyimagenet_root(Path(path).expanduser())
    key_files = [file for file in (root / "val" / "val_annotations.txt", root / "wnids.txt") if file.is_file()]
    target = cache_file(root, Path(cache_dir).expanduser(), "tinyimagenet", key_files)
    return _load_cached(target, root, lambda: decode_tinyimagenet(root))


def tinyimagenet_files(root: Path) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """The class wnids and, per split, the ``(path relative to root, wnid)`` of every image, in order.

    Raises:
        ValueError: the layout or the annotations are inconsistent; the message names the file and the fix.
    """
    wnids = sorted(entry.name for entry in (root / "train").iterdir() if entry.is_dir())
    listed_file = root / "wnids.txt"
    if listed_file.is_file():
        listed = {line.strip() for line in listed_file.read_text().splitlines() if line.strip()}
        if listed != set(wnids):
            raise ValueError(
                f"{listed_file} lists other classes than {root / 'train'} holds (only listed: "
                f"{sorted(listed - set(wnids))[:5]}, only in train/: {sorted(set(wnids) - listed)[:5]}); restore the "
                f"missing train/<wnid>/ folders or remove the extra ones."
            )
    if not wnids:
        raise ValueError(f"{root / 'train'} holds no train/<wnid>/ folders; unpack the whole release there.")
    train = []
    for wnid in wnids:
        images = sorted(rel for rel, _ in directory_images(root / "train" / wnid / "images"))
        if not images:
            raise ValueError(f"{root / 'train' / wnid / 'images'} holds no images; restore that class's files.")
        train += [(f"train/{wnid}/images/{rel}", wnid) for rel in images]
    annotations_file = root / "val" / "val_annotations.txt"
    annotated = {}
    for number, line in enumerate(annotations_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in wnids:
            raise ValueError(
                f"{annotations_file}, line {number}: {line!r} is not '<file>\\t<wnid>\\t<box>' with a wnid of "
                f"train/; restore the release's val_annotations.txt."
            )
        annotated[fields[0]] = fields[1]
    images = {rel for rel, _ in directory_images(root / "val" / "images")}
    if images != set(annotated):
        raise ValueError(
            f"{root / 'val' / 'images'} and {annotations_file} disagree (images without a line: "
            f"{sorted(images - set(annotated))[:5]}, lines without an image: {sorted(set(annotated) - images)[:5]}); "
            f"restore the release's val/ folder."
        )
    test = [(f"val/images/{name}", annotated[name]) for name in sorted(annotated)]
    return wnids, {"train": train, "test": test}


def decode_tinyimagenet(root: Path) -> ImageData:
    """Decode TinyImageNet's training and validation images into uint8 RGB tensors (no caching)."""
    start = time.perf_counter()
    wnids, splits = tinyimagenet_files(root)
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    total = len(splits["train"]) + len(splits["test"])
    rank_zero_info(f"Decoding {total:,} TinyImageNet images from {root} once; they will be cached.")
    tensors = []
    for split in ("train", "test"):
        items = splits[split]
        labels = torch.tensor([label_of[wnid] for _, wnid in items], dtype=torch.int64)
        names = [rel for rel, _ in items]
        images, _ = _decode_all([root / rel for rel in names], names, "RGB", root, TINYIMAGENET_SIZE)
        tensors += [images, labels]
    rank_zero_info(f"Decoded {total:,} images from {root} in {time.perf_counter() - start:.1f} s.")
    return ImageData(*tensors, tuple(wnids))
