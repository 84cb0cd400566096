"""Build a reduced CIFAR-10 image folder from the JPEG archive: the first N training and M test images per class.

Shared by the CPU benchmarks (``cifar10_cpu.py``, ``throughput.py``); the result is an ordinary image folder
(``train/<class>/*.jpg``, ``test/<class>/*.jpg``) that ``UnlearningDataModule(dataset="image_folder")`` reads.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def build_subset(out: Path, train_per_class: int, test_per_class: int, archive: Path = ARCHIVE) -> Path:
    """Extract the subset into ``out`` (once; an existing complete folder is reused) and return ``out``."""
    marker = out / ".complete"
    if marker.exists():
        return out
    if not archive.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found at {archive}; pass --archive PATH.")
    limits = {"train": train_per_class, "test": test_per_class}
    taken: Counter = Counter()
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        for member in members:
            parts = Path(member.name).parts  # cifar10/<split>/<class>/<file>
            split, label = parts[-3], parts[-2]
            if taken[split, label] >= limits.get(split, 0):
                continue
            taken[split, label] += 1
            target = out / split / label / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    marker.touch()
    return out
