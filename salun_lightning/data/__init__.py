"""Classifier-unlearning data: image sources, forget/retain splits, batched augmentation and the DataModule.

Example::

    >>> from salun_lightning.data import UnlearningDataModule
    >>> data = UnlearningDataModule("digits", forget_fraction=0.1, val_size=100, batch_size=64, stream="retain")
    >>> data.setup("fit")
    >>> len(data.split.forget), len(data.split.retain), len(data.split.val)  # the 1,442 training images
    (134, 1208, 100)
    >>> batch = next(iter(data.train_dataloader()))
    >>> batch["image"].shape, bool(batch["is_forget"].any())
    (torch.Size([64, 1, 8, 8]), False)
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
