"""ClassifierUnlearningModule: each method's defining effect, metrics.json, weights loading, errors, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.nn import functional as F

from salun_lightning import ClassifierUnlearningModule, UnlearningDataModule
from salun_lightning.callbacks import WeightSaliencyCallback, load_mask
from salun_lightning.labels import random_other_labels
from salun_lightning.models import build_classifier, load_weights
from salun_lightning.runs import INCOMPLETE_FILENAME


def make_model(method: str, **kwargs) -> ClassifierUnlearningModule:
    """A small ResNet for the digits (10 classes, 1 channel)."""
    return ClassifierUnlearningModule(method, model="small_resnet", num_classes=10, in_channels=1, **kwargs)


def make_data(model: ClassifierUnlearningModule = None, **kwargs) -> UnlearningDataModule:
    """Digits data serving ``model``'s training stream."""
    options = dict(dataset="digits", forget_fraction=0.1, seed=0, batch_size=64)
    if model is not None:
        options["stream"] = model.train_stream
    options.update(kwargs)
    return UnlearningDataModule(**options)


def make_trainer(root: Path, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu", devices=1, max_epochs=1, default_root_dir=str(root), logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A briefly trained original model on digits (method 'train')."""
    root = tmp_path_factory.mktemp("train")
    pl.seed_everything(0)
    model = make_model("train", lr=0.05)
    trainer, data = make_trainer(root, max_epochs=3), make_data(model)
    trainer.fit(model, data)
    trainer.test(model, data)
    return root / "model.safetensors"


def forget_loss(model: ClassifierUnlearningModule, data: UnlearningDataModule) -> float:
    model.eval()
    with torch.no_grad():
        losses = [
            F.cross_entropy(model(data.on_after_batch_transfer(b, 0)["image"]), b["label"], reduction="sum")
            for b in data.forget_dataloader()
        ]
    return float(sum(losses)) / len(data.split.forget)


def test_train_writes_weights_and_metrics(original):
    run = original.parent
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"method", "UA", "RA", "TA", "MIA", "RTE"}
    assert metrics["method"] == "train" and metrics["RTE"] > 0
    assert metrics["TA"] > 50  # three epochs on digits learn something
    forget_set = json.loads((run / "forget_set.json").read_text())
    assert forget_set["description"] == "random 10%" and forget_set["seed"] == 0 and forget_set["dataset"] == "digits"
    assert forget_set["count"] == len(json.loads((run / "forget_indices.json").read_text()))
    assert not (run / INCOMPLETE_FILENAME).exists()


@pytest.mark.parametrize("method", ["ft", "salun"])
def test_every_fit_saves_the_model_it_produced(original, tmp_path, method):
    from safetensors import safe_open

    model = make_model(method, original_weights=str(original))
    make_trainer(tmp_path, limit_train_batches=2).fit(model, make_data(model))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as saved:
        metadata = saved.metadata()
        for name, value in model.net.state_dict().items():
            assert torch.equal(saved.get_tensor(name), value), name  # the unlearned weights, not the original
    assert metadata["method"] == method and metadata["model"] == "small_resnet" and float(metadata["fit_minutes"]) > 0
    assert not torch.equal(model.net.fc.weight.detach().cpu(), load_file_tensor(original, "fc.weight"))


def load_file_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))[name]


class Explode(pl.Callback):
    def on_train_batch_end(self, *args) -> None:
        raise RuntimeError("the run dies here")


def test_a_failed_fit_leaves_no_metrics_and_marks_its_directory(original, tmp_path):
    model = make_model("ft", original_weights=str(original))
    trainer = make_trainer(tmp_path, limit_train_batches=2)
    trainer.fit(model, make_data(model))
    trainer.test(model, make_data(model))
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "model.safetensors").is_file()
    model = make_model("ft", original_weights=str(original))
    with pytest.raises(RuntimeError, match="the run dies here"):
        make_trainer(tmp_path, callbacks=[Explode()]).fit(model, make_data(model))
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert "has not finished" in (tmp_path / INCOMPLETE_FILENAME).read_text()


def test_test_of_a_checkpoint_writes_into_its_run(original, tmp_path):
    model = make_model("ft", original_weights=str(original))
    run = tmp_path / "ft"
    trainer = make_trainer(run, limit_train_batches=1)
    trainer.fit(model, make_data(model))
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    other = tmp_path / "elsewhere"
    make_trainer(other).test(make_model("ft", original_weights=str(original)), make_data(), ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    assert json.loads((run / "metrics.json").read_text())["RTE"] > 0  # the checkpoint's fit minutes
    assert not other.exists()
    with pytest.raises(ValueError, match=r"the checkpoint was saved by method 'ft', but this model is configured as 'rl'"):
        make_trainer(other).test(make_model("rl", original_weights=str(original)), make_data(),
                                 ckpt_path=str(run / "checkpoints" / "last.ckpt"))


def test_load_model_refuses_another_methods_model(original):
    with pytest.raises(ValueError, match=r"was saved by method 'train', but this model is configured as 'ft'"):
        make_model("ft", original_weights=str(original)).load_model(str(original))


def test_metrics_match_a_hand_computation(original, tmp_path):
    data = make_data()
    model = make_model("ft", original_weights=str(original))
    make_trainer(tmp_path).test(model, data)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    model.eval()
    with torch.no_grad():
        def accuracy(loader):
            correct = total = 0
            for batch in loader:
                batch = data.on_after_batch_transfer(batch, 0)
                correct += int((model(batch["image"]).argmax(1) == batch["label"]).sum())
                total += len(batch["label"])
            return 100 * correct / total

        loaders = dict(zip(data.test_split_names, data.test_dataloader()))
        assert metrics["UA"] == pytest.approx(100 - accuracy(loaders["forget"]), abs=1e-4)
        assert metrics["RA"] == pytest.approx(accuracy(loaders["retain"]), abs=1e-4)
        assert metrics["TA"] == pytest.approx(accuracy(loaders["test"]), abs=1e-4)
    assert 0 <= metrics["MIA"] <= 100


def test_ga_raises_the_forget_loss(original, tmp_path):
    model = make_model("ga", original_weights=str(original), lr=0.05)
    data = make_data(model)
    data.setup("fit")
    before = forget_loss(model, data)
    model.train()
    make_trainer(tmp_path, max_epochs=3).fit(model, data)
    after = forget_loss(model, data)
    assert after > 10 * before and after > before + 0.5, (before, after)


def test_rl_trains_on_labels_that_differ_from_the_true_ones(original, tmp_path, monkeypatch):
    seen = []
    real_cross_entropy = F.cross_entropy

    def spy(logits, labels, *args, **kwargs):
        seen.append(labels.clone())
        return real_cross_entropy(logits, labels, *args, **kwargs)

    model = make_model("rl", original_weights=str(original))
    batches = []
    original_step = model.training_step
    model.training_step = lambda batch, batch_idx: (batches.append({k: v.clone() for k, v in batch.items()}), original_step(batch, batch_idx))[1]
    monkeypatch.setattr(F, "cross_entropy", spy)  # every method's loss
    make_trainer(tmp_path, limit_train_batches=4).fit(model, make_data(model))
    assert len(seen) == len(batches) == 4
    forget_seen = retain_seen = 0
    for labels, batch in zip(seen, batches):
        forget = batch["is_forget"]
        assert (labels[forget] != batch["label"][forget]).all()
        assert (labels[~forget] == batch["label"][~forget]).all()
        forget_seen += int(forget.sum())
        retain_seen += int((~forget).sum())
    assert forget_seen > 0 and retain_seen > 0  # sequential schedule: the forget set first, then the retain set


def test_random_other_labels_cover_every_other_class():
    labels = torch.zeros(2000, dtype=torch.long)
    drawn = random_other_labels(labels, 10)
    assert set(drawn.tolist()) == set(range(1, 10))


def test_salun_leaves_non_salient_weights_untouched(original, tmp_path):
    from safetensors.torch import load_file

    start = load_file(str(original))
    model = make_model("salun", original_weights=str(original))
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, make_data(model))
    saliency = next(c for c in trainer.callbacks if isinstance(c, WeightSaliencyCallback))
    changed = 0
    for name, param in model.net.named_parameters():
        mask = saliency.mask[f"net.{name}"]
        assert torch.equal(param.detach()[~mask], start[name][~mask]), name
        changed += int((param.detach()[mask] != start[name][mask]).sum())
    assert changed > 0
    saved, metadata = load_mask(tmp_path / "mask.safetensors")  # the run keeps its mask, with its provenance
    assert saved.keys() == saliency.mask.keys()
    assert all(torch.equal(saved[name], saliency.mask[name]) for name in saved)
    assert metadata["forget_set"] == json.loads((tmp_path / "forget_set.json").read_text())["id"]


def test_salun_with_a_given_mask_writes_no_copy(original, tmp_path):
    first = make_model("salun", original_weights=str(original))
    make_trainer(tmp_path / "first").fit(first, make_data(first))
    model = make_model("salun", original_weights=str(original), mask_path=str(tmp_path / "first" / "mask.safetensors"))
    make_trainer(tmp_path / "second").fit(model, make_data(model))
    assert (tmp_path / "second" / "model.safetensors").is_file()
    assert not (tmp_path / "second" / "mask.safetensors").exists()  # its config.yaml names the mask it used


def test_retrain_starts_fresh_and_never_sees_forget_samples(original, tmp_path):
    from safetensors.torch import load_file

    model = make_model("retrain")
    data = make_data(model)
    indices = []
    original_step = model.training_step
    model.training_step = lambda batch, batch_idx: (indices.append(batch["index"].clone()), original_step(batch, batch_idx))[1]
    make_trainer(tmp_path).fit(model, data)
    seen = torch.cat(indices)
    assert not torch.isin(seen, data.split.forget).any()
    assert torch.equal(seen.sort().values, data.split.retain)
    trained = load_file(str(original))
    assert not torch.equal(model.net.stem[0].weight.detach(), trained["stem.0.weight"])


def test_l1_sparse_adds_a_decaying_penalty(original, tmp_path):
    model = make_model("l1_sparse", original_weights=str(original), method_args={"l1_alpha": 1e-3})
    weights = []
    model.log = lambda name, value, **kwargs: weights.append(value) if name == "train/l1_weight" else None
    make_trainer(tmp_path, max_epochs=2).fit(model, make_data(model))
    assert weights[0] == pytest.approx(1e-3)
    assert weights == sorted(weights, reverse=True) and weights[-1] < weights[0] / 5


def test_loads_a_lightning_checkpoint_strictly(original, tmp_path):
    model = make_model("ft", original_weights=str(original))
    trainer = make_trainer(tmp_path, limit_train_batches=1)
    trainer.fit(model, make_data(model))
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    net = build_classifier("small_resnet", 10, 1)
    load_weights(net, str(tmp_path / "ft.ckpt"))
    assert torch.equal(net.fc.weight, model.net.fc.weight.detach())


def test_weights_mismatch_names_the_keys(original):
    with pytest.raises(ValueError, match=r"do not fit the ResNet: missing \['bn1\.bias'"):
        load_weights(build_classifier("resnet18", 10, 1), str(original))
    with pytest.raises(ValueError, match=r"wrong shape \['fc\.weight \(10, 64\) != \(7, 64\)', 'fc\.bias \(10,\) != \(7,\)'\] \(2\)"):
        load_weights(build_classifier("small_resnet", 7, 1), str(original))
    with pytest.raises(FileNotFoundError, match="original_weights 'missing.safetensors' does not exist; run the 'train' method first"):
        load_weights(build_classifier("small_resnet", 10, 1), "missing.safetensors")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="salun"), "unlearns from the original model: pass original_weights"),
        (dict(method="retrain", original_weights="x.safetensors"), "trains from fresh weights: remove original_weights"),
        (dict(method="forget"), "unknown method 'forget'; choose one of train, retrain, ft, ga, rl, l1_sparse, salun"),
        (dict(method="ssd", original_weights="x", save_mask_path="m"), "method 'ssd' cannot take a saliency mask: its"),
        (dict(method="salun", original_weights="x", saliency_ratio=1.5), r"saliency_ratio must be in \(0, 1\]"),
        (dict(method="train", lr=-1.0), "lr must be positive"),
        (dict(method="train", num_classes=None), "num_classes and in_channels are required"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassifierUnlearningModule(**{"num_classes": 10, "in_channels": 1, **kwargs})


def test_unknown_model_error():
    with pytest.raises(ValueError, match="unknown model 'resnet99'; choose one of resnet18, small_resnet, vgg16_bn, 'small_resnet_w<width>'"):
        build_classifier("resnet99", 10)
    with pytest.raises(ValueError, match="unknown torchvision classification model 'nope'"):
        build_classifier("torchvision:nope", 10)


def test_two_process_ddp_salun_end_to_end(original, tmp_path):
    from safetensors.torch import load_file

    model = make_model("salun", original_weights=str(original))
    data = make_data(model)
    make_trainer(tmp_path, strategy="ddp_spawn", devices=2, max_epochs=1).fit(model, data)
    assert not torch.equal(model.net.fc.weight.detach(), load_file(str(original))["fc.weight"])  # trained weights came back
    make_trainer(tmp_path).test(model, data)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "salun" and 0 <= metrics["UA"] <= 100
    assert json.loads((tmp_path / "forget_indices.json").read_text()) == data.split.forget.tolist()


def test_an_unreadable_weights_file_names_the_file_and_the_option(original, tmp_path):
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(original.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cannot read original_weights '.*cut\.safetensors': .*may be truncated"):
        make_model("ft", original_weights=str(truncated))


@pytest.mark.parametrize("random_labels", ["other", "any"])
def test_random_labels_exclude_the_true_class_unless_asked(original, tmp_path, monkeypatch, random_labels):
    forget_labels, drawn = [], []
    real_cross_entropy = F.cross_entropy

    def spy(logits, labels, *args, **kwargs):
        drawn.append(labels.clone())
        return real_cross_entropy(logits, labels, *args, **kwargs)

    model = make_model("rl", original_weights=str(original), method_args={"random_labels": random_labels})
    original_step = model.training_step

    def recording_step(batch, batch_idx):
        forget_labels.append((batch["label"].clone(), batch["is_forget"].clone()))
        return original_step(batch, batch_idx)

    model.training_step = recording_step
    monkeypatch.setattr(F, "cross_entropy", spy)  # every method's loss
    make_trainer(tmp_path, max_epochs=3).fit(model, make_data(model, forget_fraction=0.3))
    kept = torch.cat([d[f] == true[f] for d, (true, f) in zip(drawn, forget_labels)])
    assert len(kept) > 1000
    assert (not kept.any()) if random_labels == "other" else 0.05 < kept.float().mean() < 0.15  # 1 in 10


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_non_salient_reaches_the_callback(original, tmp_path, freeze):
    from safetensors.torch import load_file

    start = load_file(str(original))
    model = make_model("salun", original_weights=str(original), freeze_non_salient=freeze, saliency_precision="trainer")
    trainer = make_trainer(tmp_path, limit_train_batches=3)
    trainer.fit(model, make_data(model))
    saliency = next(c for c in trainer.callbacks if isinstance(c, WeightSaliencyCallback))
    assert saliency.freeze_non_salient is freeze and saliency.saliency_precision == "trainer"
    moved = sum(int((p.detach()[~saliency.mask[f"net.{n}"]] != start[n][~saliency.mask[f"net.{n}"]]).sum())
                for n, p in model.net.named_parameters())
    assert (moved == 0) if freeze else moved > 0  # gradient masking alone lets momentum and weight decay move them


def test_a_wider_small_resnet_is_built_by_name():
    net = build_classifier("small_resnet_w32", 10, 3)
    assert net.stem[0].out_channels == 32 and net.fc.in_features == 128
    with pytest.raises(ValueError, match="unknown model 'small_resnet_w0'"):
        build_classifier("small_resnet_w0", 10)


def test_compiling_and_channels_last_change_no_result_and_no_weight_name(original, tmp_path):
    torch.manual_seed(0)
    plain = make_model("ft", original_weights=str(original))
    torch.manual_seed(0)
    fast = make_model("ft", original_weights=str(original), compile_backend="eager", channels_last=True)
    for model, root in ((plain, tmp_path / "plain"), (fast, tmp_path / "fast")):
        pl.seed_everything(0)
        make_trainer(root, limit_train_batches=2).fit(model, make_data(model))
    assert fast._compiled is not None and plain._compiled is None and plain._channels_last is False  # CPU default
    assert fast.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(fast.state_dict()) == list(plain.state_dict())
    for (name, a), b in zip(plain.net.state_dict().items(), fast.net.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, atol=1e-5, rtol=1e-4)
