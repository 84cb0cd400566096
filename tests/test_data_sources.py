"""CIFAR-100, SVHN and TinyImageNet from small synthetic files in their real layouts (nothing downloads): decoding,
labels, class names, order, the data module on each, their configs, and TinyImageNet's layout errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
import torchvision.datasets.svhn
from PIL import Image

import salun_lightning.data.sources as sources
from salun_lightning.data import UnlearningDataModule
from salun_lightning.methods import METHODS
from salun_lightning.models import build_classifier
from tests.test_cli import CONFIGS, ParseOnly, parsed

CIFAR100_TRAIN_LABELS, CIFAR100_TEST_LABELS = [0, 5, 99, 5, 0, 42], [99, 0, 5, 42]
SVHN_TRAIN_LABELS, SVHN_TEST_LABELS = [10, 1, 2, 10, 9, 3], [10, 1, 9, 2]  # as stored: 10 is the digit 0
WNIDS = ["n01641577", "n01443537", "n01629819"]  # wnids.txt's order; the classes are sorted
TRAIN_PER_CLASS = 3
VAL_ANNOTATIONS = {"val_5.JPEG": WNIDS[0], "val_0.JPEG": WNIDS[1], "val_3.JPEG": WNIDS[2], "val_1.JPEG": WNIDS[0],
                   "val_4.JPEG": WNIDS[1], "val_2.JPEG": WNIDS[2]}  # written in this (unsorted) order
GREY = f"train/{WNIDS[2]}/images/{WNIDS[2]}_1.JPEG"


@pytest.fixture
def skip_md5(monkeypatch):
    """Let torchvision accept synthetic files: it compares every file's md5 with the real release's.

    Only that comparison is replaced (by "the file exists"); the project's own file check, torchvision's parsing of
    the pickles and .mat files and everything after them run as they do on the real data.
    """
    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def random_images(count: int, seed: int) -> np.ndarray:
    """uint8 ``[count, 3, 32, 32]``."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)


def write_cifar100(root: Path) -> dict[str, np.ndarray]:
    """torchvision's ``cifar-100-python/{train,test,meta}`` pickles; return the images ``[N, 3, 32, 32]`` by split."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    images = {}
    for seed, (split, labels) in enumerate((("train", CIFAR100_TRAIN_LABELS), ("test", CIFAR100_TEST_LABELS))):
        images[split] = random_images(len(labels), seed)
        batch = {"batch_label": split, "filenames": [f"{split}_{i}.png" for i in range(len(labels))],
                 "fine_labels": labels, "coarse_labels": [label % 20 for label in labels],
                 "data": images[split].reshape(len(labels), 3 * 32 * 32)}  # rows: the red plane, green, blue
        (folder / split).write_bytes(pickle.dumps(batch))
    meta = {"fine_label_names": list(sources.KNOWN_DATASETS["cifar100"].class_names),
            "coarse_label_names": [f"super{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return images


def write_svhn(root: Path) -> dict[str, np.ndarray]:
    """torchvision's ``{train,test}_32x32.mat`` (X: ``[H, W, C, N]``, y: ``[N, 1]``); return the images by split."""
    root.mkdir(parents=True)
    images = {}
    for seed, (split, labels) in enumerate((("train", SVHN_TRAIN_LABELS), ("test", SVHN_TEST_LABELS))):
        images[split] = random_images(len(labels), seed + 10)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images[split].transpose(2, 3, 1, 0),
                                                       "y": np.array(labels, dtype=np.uint8)[:, None]})
    return images


def tiny_image(seed: int) -> np.ndarray:
    """A 64x64 RGB image, one colour above row 32 and another below (edges on JPEG blocks: decoded almost exactly)."""
    colours = np.random.default_rng(seed).integers(0, 256, (2, 3), dtype=np.uint8)
    return np.repeat(colours, 32, axis=0)[:, None, :].repeat(64, axis=1)


def write_tinyimagenet(parent: Path) -> dict[str, np.ndarray]:
    """``parent/tiny-imagenet-200`` in the release's layout, one grey JPEG; return the written arrays by path."""
    root = parent / sources.TINYIMAGENET_FOLDER
    arrays = {}
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for n in range(TRAIN_PER_CLASS):
            arrays[f"train/{wnid}/images/{wnid}_{n}.JPEG"] = tiny_image(10 * c + n)
    (root / "val" / "images").mkdir(parents=True)
    (root / "test" / "images").mkdir(parents=True)
    for n, name in enumerate(VAL_ANNOTATIONS):
        arrays[f"val/images/{name}"] = tiny_image(100 + n)
    arrays[GREY] = arrays[GREY][..., 0]
    for rel, array in arrays.items():
        Image.fromarray(array).save(root / rel, quality=95, subsampling=0)  # 4:4:4: no chroma blur at the edge
    Image.fromarray(tiny_image(999)).save(root / "test" / "images" / "test_0.JPEG")  # unlabelled: unused
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{wnid}\tsomething\n" for wnid in WNIDS))
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in VAL_ANNOTATIONS.items())
    )
    return arrays


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path / "data", write_tinyimagenet(tmp_path / "data")


def decoded(file: Path) -> np.ndarray:
    """PIL's RGB decoding of ``file`` as ``[3, H, W]``."""
    with Image.open(file) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


# ------------------------------------------------------------------------------------------------------- torchvision
def test_torchvision_checks_the_md5_of_synthetic_files_and_the_project_says_what_to_do(tmp_path):
    write_cifar100(tmp_path)
    with pytest.raises(ValueError, match=r"torchvision could not read cifar100 \(train\).*corrupt.*download=True"):
        sources.load_torchvision_data("cifar100", tmp_path)


def test_cifar100_files_decode_exactly(tmp_path, skip_md5):
    images = write_cifar100(tmp_path)
    data = sources.load_source("cifar100", tmp_path, tmp_path / "cache")
    for split, labels in (("train", CIFAR100_TRAIN_LABELS), ("test", CIFAR100_TEST_LABELS)):
        assert torch.equal(getattr(data, f"{split}_images"), torch.from_numpy(images[split]))
        assert getattr(data, f"{split}_images").dtype == torch.uint8
        assert getattr(data, f"{split}_labels").tolist() == labels
    assert data.class_names == sources.KNOWN_DATASETS["cifar100"].class_names
    assert data.class_names[:3] == ("apple", "aquarium_fish", "baby") and len(data.class_names) == 100


def test_svhn_files_decode_exactly_with_ten_as_digit_zero(tmp_path, skip_md5):
    images = write_svhn(tmp_path / "svhn")
    data = sources.load_source("svhn", tmp_path / "svhn", tmp_path / "cache")
    for split, labels in (("train", SVHN_TRAIN_LABELS), ("test", SVHN_TEST_LABELS)):
        assert torch.equal(getattr(data, f"{split}_images"), torch.from_numpy(images[split]))
        assert getattr(data, f"{split}_labels").tolist() == [label % 10 for label in labels]
    assert data.class_names == tuple(str(d) for d in range(10))


# ------------------------------------------------------------------------------------------------------- tinyimagenet
def test_tinyimagenet_decodes_sorted_classes_ordered_images_and_grey_as_rgb(tiny, tmp_path):
    parent, arrays = tiny
    root = parent / sources.TINYIMAGENET_FOLDER
    data = sources.load_source("tinyimagenet", parent, tmp_path / "cache")
    classes = sorted(WNIDS)
    assert data.class_names == tuple(classes)  # sorted wnids (ImageFolder's order), not wnids.txt's
    train = sorted(p for p in arrays if p.startswith("train/"))
    test = [f"val/images/{name}" for name in sorted(VAL_ANNOTATIONS)]
    for split, paths in (("train", train), ("test", test)):
        images = getattr(data, f"{split}_images")
        assert images.dtype == torch.uint8 and images.shape == (len(paths), 3, 64, 64)
        assert torch.equal(images, torch.from_numpy(np.stack([decoded(root / p) for p in paths])))
        written = np.stack([np.broadcast_to(arrays[p][..., None], (64, 64, 3)) if p == GREY else arrays[p]
                            for p in paths]).transpose(0, 3, 1, 2)
        assert np.abs(images.numpy().astype(int) - written).max() <= 3  # the right images, up to JPEG's rounding
        labels = [classes.index(p.split("/")[1]) for p in train] if split == "train" else [
            classes.index(VAL_ANNOTATIONS[p.split("/")[-1]]) for p in test]
        assert getattr(data, f"{split}_labels").tolist() == labels
    grey = data.train_images[train.index(GREY)]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    assert torch.equal(sources.load_source("tinyimagenet", root, tmp_path / "cache").train_images, data.train_images)


def test_tinyimagenet_is_cached_once_and_the_cache_follows_the_annotations(tiny, tmp_path, monkeypatch):
    parent, _ = tiny
    cache = tmp_path / "cache"
    first = sources.load_tinyimagenet_data(parent, cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    monkeypatch.setattr(sources, "decode_tinyimagenet", lambda root: pytest.fail("decoded again despite the cache"))
    assert torch.equal(sources.load_tinyimagenet_data(parent, cache).test_labels, first.test_labels)
    monkeypatch.undo()
    annotations = parent / sources.TINYIMAGENET_FOLDER / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text().replace(f"val_0.JPEG\t{WNIDS[1]}", f"val_0.JPEG\t{WNIDS[0]}"))
    relabelled = sources.load_tinyimagenet_data(parent, cache)
    assert relabelled.test_labels[0] == sorted(WNIDS).index(WNIDS[0]) != first.test_labels[0]
    assert len(list(cache.iterdir())) == 2


def test_a_broken_tinyimagenet_layout_is_a_clear_error_before_decoding(tiny, tmp_path, monkeypatch):
    parent, _ = tiny
    root = parent / sources.TINYIMAGENET_FOLDER
    cache = tmp_path / "cache"
    data = UnlearningDataModule("tinyimagenet", data_path=str(tmp_path / "elsewhere"), cache_dir=str(cache),
                                forget_count=1)
    with pytest.raises(FileNotFoundError, match=r"tinyimagenet is not in .*elsewhere: missing .*train.*Set data_path"):
        data.prepare_data()
    image = root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_1.JPEG"
    Image.fromarray(np.zeros((32, 64, 3), dtype=np.uint8)).save(image)
    with pytest.raises(ValueError, match=rf"{WNIDS[0]}_1.JPEG is 64x32 but every image of this data set is 64x64"):
        sources.load_tinyimagenet_data(parent, cache)
    monkeypatch.setattr(sources, "_decode_all", lambda *args: pytest.fail("decoding started before the checks"))
    (root / "val" / "images" / "val_9.JPEG").write_bytes(image.read_bytes())
    with pytest.raises(ValueError, match=r"disagree \(images without a line: \['val_9.JPEG'\]"):
        sources.load_tinyimagenet_data(parent, cache)
    (root / "wnids.txt").write_text("\n".join([*WNIDS, "n09999999"]))
    with pytest.raises(ValueError, match=r"wnids.txt lists other classes .*only listed: \['n09999999'\]"):
        sources.load_tinyimagenet_data(parent, cache)
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing .*val_annotations.txt\. Set data_path to the unpacked"):
        sources.load_tinyimagenet_data(parent, cache)


# ------------------------------------------------------------------------------------------------------- data module
@pytest.fixture
def sets(tmp_path, skip_md5) -> dict[str, tuple[Path, int]]:
    """Each data set's data_path and a class of its synthetic training set."""
    write_cifar100(tmp_path / "tv")
    write_svhn(tmp_path / "svhn")
    write_tinyimagenet(tmp_path / "tiny")
    return {"cifar100": (tmp_path / "tv", 5), "svhn": (tmp_path / "svhn", 0),
            "tinyimagenet": (tmp_path / "tiny", 1)}


@pytest.mark.parametrize("dataset", ["cifar100", "svhn", "tinyimagenet"])
def test_the_data_module_serves_every_new_data_set(dataset, sets, tmp_path):
    path, forget_class = sets[dataset]
    common = dict(data_path=str(path), cache_dir=str(tmp_path / "cache"), batch_size=4, stream="forget_retain")
    data = UnlearningDataModule(dataset, forget_count=2, **common)
    assert data.augment == (dataset != "svhn")
    assert data.schedule == ("sequential" if dataset == "svhn" else "interleaved")
    data.prepare_data()
    data.setup("fit")
    size = 64 if dataset == "tinyimagenet" else 32
    assert data.image_shape == (3, size, size)
    assert data.num_classes == {"cifar100": 100, "svhn": 10, "tinyimagenet": 3}[dataset]
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (3, size, size)
    assert len(batch["label"]) == (2 if data.schedule == "sequential" else 4)  # sequential: the forget set's batch
    loaders = data.test_dataloader()
    assert [next(iter(loader))["split"] for loader in loaders] == ["forget", "retain", "test"]
    assert sum(len(b["index"]) for b in loaders[2]) == len(data._load().test_labels)

    by_class = UnlearningDataModule(dataset, forget_set="class", forget_class=forget_class, **common)
    by_class.setup("fit")
    labels = by_class._load().train_labels
    assert by_class.split.forget.tolist() == torch.nonzero(labels == forget_class).flatten().tolist()
    tests = dict(zip(by_class.test_split_names, by_class.test_dataloader()))
    assert list(tests) == ["forget", "retain", "test", "test_forgotten_class"]
    assert {int(label) for b in tests["test_forgotten_class"] for label in b["label"]} == {forget_class}
    assert forget_class not in {int(label) for b in tests["test"] for label in b["label"]}


def test_resnet18_with_the_cifar_stem_takes_tinyimagenet_images():
    logits = build_classifier("resnet18", num_classes=200).eval()(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 200)  # adaptive pooling after an 8x8 last stage


# ------------------------------------------------------------------------------------------------------- configs
SCENARIOS = ("class", "random10", "random50", "request")


@pytest.mark.parametrize("dataset", ["cifar100", "svhn", "tinyimagenet"])
def test_every_new_config_parses_through_the_salun_command_line(dataset):
    assert sorted(p.name for p in (CONFIGS / dataset).glob("*.yaml")) == sorted(f"{m}.yaml" for m in (*METHODS, "base"))
    assert sorted(p.stem for p in (CONFIGS / dataset / "forget").glob("*.yaml")) == sorted(SCENARIOS)
    for method in METHODS:
        config = parsed(f"{dataset}/{method}.yaml")
        assert config["data"]["init_args"]["dataset"] == dataset
        assert config["model"]["init_args"]["method"] == method
        assert config["trainer"]["default_root_dir"] == f"runs/{dataset}/{method}"
    scenarios = {scenario: parsed(f"{dataset}/salun.yaml", f"{dataset}/forget/{scenario}.yaml")["data"]["init_args"]
                 for scenario in SCENARIOS}
    assert {name: args["forget_set"] for name, args in scenarios.items()} == {
        "class": "class", "random10": "random", "random50": "random", "request": "indices"}
    assert scenarios["random50"]["forget_fraction"] == 0.5 and scenarios["class"]["forget_fraction"] is None


@pytest.mark.parametrize("dataset", ["cifar100", "svhn", "tinyimagenet"])
def test_the_class_scenario_config_runs_on_the_synthetic_files(dataset, sets, tmp_path):
    path, _ = sets[dataset]
    configs = [arg for name in ("salun", "forget/class") for arg in ("--config", f"{CONFIGS / dataset / name}.yaml")]
    overrides = [f"--data.init_args.data_path={path}", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
                 "--data.init_args.val_size=0"]  # the configs hold out more images than the synthetic files have
    init_args = ParseOnly(args=[*configs, *overrides], run=False).config["data"]["init_args"].as_dict()
    data = UnlearningDataModule(**{**init_args, "stream": "forget_retain"})  # the command line links the stream
    data.setup("fit")
    labels = data._load().train_labels
    assert data.forget_class_index == 0 and data.split.forget.tolist() == torch.nonzero(labels == 0).flatten().tolist()
    assert sum(len(batch["index"]) for batch in data.train_dataloader()) == len(labels)
