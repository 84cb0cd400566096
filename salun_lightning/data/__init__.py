"""Classifier-unlearning data: image sources, forget/retain splits, batched augmentation and the DataModule.

Example::

    from salun_lightning.data import UnlearningDataModule

    data = UnlearningDataModule("cifar10", forget_fraction=0.1, val_size=5000, batch_size=256)
"""

from salun_lightning.data.augment import normalize, random_crop_flip
from salun_lightning.data.datamodule import (
    IndexedImageDataset,
    ShuffledBlocksSampler,
    UnlearningDataModule,
    collate_augmented_batch,
    collate_batch,
)
from salun_lightning.data.sources import ImageData, load_image_folder_data
from salun_lightning.data.splits import Split, make_split, read_indices_file, resolve_class

__all__ = [
    "ImageData",
    "IndexedImageDataset",
    "ShuffledBlocksSampler",
    "Split",
    "UnlearningDataModule",
    "collate_augmented_batch",
    "collate_batch",
    "load_image_folder_data",
    "make_split",
    "normalize",
    "random_crop_flip",
    "read_indices_file",
    "resolve_class",
]
