"""WeightSaliencyCallback: exact masks, frozen weights under every optimizer and precision, DDP, resume, files, errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from salun_lightning.callbacks import WeightSaliencyCallback, load_mask
from tests.reference import brute_force_mask

FEATURES, CLASSES = 12, 4


def make_dataset(count: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, FEATURES, generator=generator)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    return TensorDataset(inputs, labels)


class PlainClassifier(pl.LightningModule):
    """A LightningModule that knows nothing about saliency: it logs, uses batch norm and dropout."""

    def __init__(self, optimizer: str = "sgd", unused_layer: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(16, CLASSES)
        self.unused = nn.Linear(3, 3) if unused_layer else None
        self.optimizer_name = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.1)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.01, weight_decay=0.01)
        raise ValueError(self.optimizer_name)


def reference_mask(model: PlainClassifier, forget: TensorDataset, ratio: float, names=None) -> dict:
    """Hand-made reference: eval mode, gradient of the summed per-sample loss, brute-force top-k."""
    model = model.eval()
    x, y = forget.tensors
    model.zero_grad()
    F.cross_entropy(model(x), y, reduction="sum").backward()
    saliency = {n: (p.grad.abs() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    if names is not None:
        saliency = {n: s for n, s in saliency.items() if n in names}
    model.zero_grad(set_to_none=True)
    return brute_force_mask(saliency, ratio)


def trainer(**kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return f"{tensor.dtype}{tuple(tensor.shape)}".encode() + tensor.detach().cpu().contiguous().numpy().tobytes()


def reference_parameter_hash(parameters: dict[str, torch.Tensor]) -> str:
    """The documented parameter hash: sha256 over each name, then its tensor's dtype, shape and bytes."""
    return hashlib.sha256(b"".join(name.encode() + _tensor_bytes(v) for name, v in parameters.items())).hexdigest()


def reference_batches_hash(loader) -> str:
    """The documented forget-set hash: every tensor of every batch, dicts in key order, tuples and lists in order."""

    def tensors(batch):
        if isinstance(batch, torch.Tensor):
            return [batch]
        values = batch.values() if isinstance(batch, dict) else batch
        return [t for value in values for t in tensors(value)]

    data = b"".join(_tensor_bytes(t) for batch in loader for t in tensors(batch))
    return "batches-sha256:" + hashlib.sha256(data).hexdigest()


def test_mask_equals_hand_made_reference_in_plain_module():
    forget = make_dataset(37, seed=1)
    model = PlainClassifier()
    expected = reference_mask(PlainClassifier(), forget, 0.5)
    callback = WeightSaliencyCallback(ratio=0.5, forget_dataloader=DataLoader(forget, batch_size=8))
    trainer(max_epochs=1, callbacks=[callback]).fit(model, DataLoader(make_dataset(32, seed=2), batch_size=8))
    assert set(callback.mask) == set(expected)
    for name, mask in expected.items():
        assert torch.equal(callback.mask[name], mask), name
    total = sum(m.numel() for m in expected.values())
    assert callback.saliency_stats["kept"] == total // 2
    assert callback.saliency_stats["kept_fraction"] == pytest.approx((total // 2) / total)
    assert set(callback.saliency_stats["per_parameter"]) == set(expected)
    assert callback.saliency_stats["saliency_seconds"] > 0 and callback.saliency_stats["selection_seconds"] > 0
    assert callback.saliency_stats["source"] == "forget set"


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "adam"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_non_salient_weights_stay_bitwise_equal(optimizer, precision):
    model = PlainClassifier(optimizer)
    with torch.no_grad():
        model.body[0].weight[:, :3] = -0.0  # signed zeros must survive too
    start = snapshot(model)
    callback = WeightSaliencyCallback(ratio=0.3, forget_dataloader=DataLoader(make_dataset(20, 1), batch_size=8))
    fit = trainer(max_epochs=3, callbacks=[callback], precision=precision, accumulate_grad_batches=2,
                  gradient_clip_val=0.05)
    fit.fit(model, DataLoader(make_dataset(48, 2), batch_size=8, shuffle=True))
    moved = 0
    for name, param in model.named_parameters():
        mask = callback.mask[name]
        assert torch.equal(param.detach().view(torch.int32)[~mask], start[name].view(torch.int32)[~mask]), name
        moved += int((param.detach()[mask] != start[name][mask]).sum())
        state = fit.optimizers[0].state[param]
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                assert not value[~mask].any(), (name, key)
    assert moved > 0.5 * sum(int(m.sum()) for m in callback.mask.values())


def test_without_freezing_only_gradients_are_masked():
    model = PlainClassifier("sgd")
    start = snapshot(model)
    callback = WeightSaliencyCallback(freeze_non_salient=False, forget_dataloader=DataLoader(make_dataset(20, 1)))
    trainer(max_epochs=1, callbacks=[callback]).fit(model, DataLoader(make_dataset(16, 2), batch_size=8))
    weight = model.head.weight.detach()
    mask = callback.mask["head.weight"]
    # weight decay and momentum still move non-salient weights: the upstream behaviour, on request
    assert not torch.equal(weight[~mask], start["head.weight"][~mask])


def test_restore_runs_once_per_optimizer_step_and_hooks_are_removed():
    model = PlainClassifier("adamw")
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(make_dataset(8, 1), batch_size=4))
    calls = []
    original = callback._after_optimizer_step
    callback._after_optimizer_step = lambda *args: (calls.append(1), original(*args))
    fit = trainer(max_epochs=1, callbacks=[callback], accumulate_grad_batches=3)
    fit.fit(model, DataLoader(make_dataset(48, 2), batch_size=4))  # 12 micro-batches -> 4 optimizer steps
    assert len(calls) == 4
    assert not fit.optimizers[0]._optimizer_step_post_hooks


class FailingClassifier(PlainClassifier):
    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_hooks_are_removed_when_fit_fails():
    model = FailingClassifier()
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(make_dataset(8, 1), batch_size=4))
    fit = trainer(callbacks=[callback])
    with pytest.raises(RuntimeError, match="boom"):
        fit.fit(model, DataLoader(make_dataset(32, 2), batch_size=4))
    assert not fit.optimizers[0]._optimizer_step_post_hooks


def test_restore_skipped_when_amp_scaler_skips_the_step():
    param = nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    optimizer = torch.optim.AdamW([param], lr=0.1, weight_decay=0.5)
    callback = WeightSaliencyCallback()
    callback.mask = {"p": torch.tensor([True, False, True, False])}
    callback._partial = [(param, callback.mask["p"], torch.where(callback.mask["p"], 0, param.detach()))]
    calls = []
    original = callback._after_optimizer_step
    optimizer.register_step_post_hook(lambda *args: (calls.append(1), original(*args)))
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale((param * torch.tensor([float("inf"), 0.0, 1.0, 0.0])).sum()).backward()
    param.grad.mul_(callback.mask["p"])
    scaler.step(optimizer)  # an inf gradient: the scaler skips optimizer.step()
    scaler.update()
    assert calls == []
    optimizer.zero_grad()
    scaler.scale((param * torch.tensor([1.0, 0.0, 1.0, 0.0])).sum()).backward()
    scaler.step(optimizer)
    assert calls == [1]
    assert param.detach()[1].item() == 2.0 and param.detach()[3].item() == 4.0
    assert param.detach()[0].item() != 1.0


def test_gradients_are_zero_after_the_saliency_pass_and_modes_restored():
    class Probe(PlainClassifier):
        def on_fit_start(self):
            self.seen = {
                "grads": [p.grad for p in self.parameters()],
                "body_training": self.body.training,
                "frozen_sub_training": self.frozen_sub.training,
            }

    model = Probe()
    model.frozen_sub = nn.Dropout(0.1).eval()
    model.train()
    model.frozen_sub.eval()
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(make_dataset(8, 1), batch_size=4))
    trainer(max_epochs=1, callbacks=[callback], limit_train_batches=1).fit(model, DataLoader(make_dataset(8, 2), batch_size=4))
    assert all(g is None for g in model.seen["grads"])
    assert model.seen["body_training"] is True
    assert model.seen["frozen_sub_training"] is False


def test_loss_precedence_loss_fn_then_saliency_loss_then_training_step():
    forget = make_dataset(16, 1)
    reference = reference_mask(PlainClassifier(), forget, 0.5)

    class WithSaliencyLoss(PlainClassifier):
        def saliency_loss(self, batch):  # only the head's bias matters for this loss
            return self.head.bias.square().sum() * 0 + self.head.bias.sum()

    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(forget, batch_size=4))
    trainer(max_epochs=1, callbacks=[callback], limit_train_batches=1).fit(
        WithSaliencyLoss(), DataLoader(make_dataset(8, 2), batch_size=4))
    assert not torch.equal(callback.mask["head.weight"], reference["head.weight"])
    assert callback.mask["head.bias"].all()  # the only non-zero saliency

    def loss_fn(module, batch):
        x, y = batch
        return F.cross_entropy(module(x), y)

    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(forget, batch_size=4), loss_fn=loss_fn)
    trainer(max_epochs=1, callbacks=[callback], limit_train_batches=1).fit(
        WithSaliencyLoss(), DataLoader(make_dataset(8, 2), batch_size=4))
    for name, mask in reference.items():
        assert torch.equal(callback.mask[name], mask), name


def test_parameter_filter_ranks_only_selected_and_freezes_the_rest():
    model = PlainClassifier("adamw")
    model.body[1].weight.requires_grad_(False)  # ignored entirely
    start = snapshot(model)
    forget = make_dataset(16, 1)
    selected = {"head.weight", "head.bias"}
    expected = reference_mask(PlainClassifier(), forget, 0.5, names=selected)
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(forget, batch_size=4), parameters=[r"^head\."])
    trainer(callbacks=[callback]).fit(model, DataLoader(make_dataset(32, 2), batch_size=8))
    assert set(callback.mask) == selected
    for name in selected:
        assert torch.equal(callback.mask[name], expected[name])
    for name in ("body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"):
        assert torch.equal(dict(model.named_parameters())[name], start[name]), name


def test_save_mask_then_load_it_in_another_fit(tmp_path):
    path = tmp_path / "masks" / "mask.safetensors"
    forget = DataLoader(make_dataset(16, 1), batch_size=4)
    first = WeightSaliencyCallback(ratio=0.25, forget_dataloader=forget, save_mask_path=str(path))
    trainer(max_epochs=1, callbacks=[first], limit_train_batches=1).fit(PlainClassifier(), DataLoader(make_dataset(8, 2), batch_size=4))
    assert sorted(os.listdir(path.parent)) == ["mask.safetensors"]  # no temporary file left behind
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    total = sum(m.numel() for m in first.mask.values())
    assert metadata["ratio"] == "0.25" and metadata["N"] == str(total) and metadata["k"] == str(total // 4)
    assert metadata["loss"] == "training_step" and metadata["model_class"].endswith("PlainClassifier")
    assert len(metadata["parameter_signature"]) == 64

    second = WeightSaliencyCallback(ratio=0.25, mask_path=str(path))  # no forget data needed
    trainer(max_epochs=1, callbacks=[second], limit_train_batches=1).fit(PlainClassifier(), DataLoader(make_dataset(8, 2), batch_size=4))
    for name, mask in first.mask.items():
        assert torch.equal(second.mask[name], mask)
    assert "saliency_seconds" not in second.saliency_stats  # loaded, not computed
    assert second.saliency_stats["source"] == f"mask_path {str(path)!r}"


def test_upstream_mask_format_loads(tmp_path):
    model = PlainClassifier()
    generator = torch.Generator().manual_seed(3)
    upstream = {n: torch.randint(0, 2, p.shape, generator=generator) for n, p in model.named_parameters()}
    path = tmp_path / "with_0.5.pt"
    torch.save(upstream, path)
    callback = WeightSaliencyCallback(mask_path=str(path))
    unknown = re.escape(f"mask_path {str(path)!r} records no forget_set, ratio, parameter_hash (an upstream SalUn mask "
                        "or an older file): its provenance is unknown")
    with pytest.warns(UserWarning, match=unknown):
        fit_with(callback, model)
    for name, value in upstream.items():
        assert torch.equal(callback.mask[name], value.bool())


def test_resume_restores_mask_and_starting_values_without_recomputing(tmp_path, monkeypatch):
    model = PlainClassifier("sgd")
    start = snapshot(model)
    forget = DataLoader(make_dataset(16, 1), batch_size=4)
    data = DataLoader(make_dataset(32, 2), batch_size=8)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last", save_on_train_epoch_end=True)
    first = WeightSaliencyCallback(forget_dataloader=forget)
    trainer(max_epochs=1, callbacks=[first, checkpoint], enable_checkpointing=True).fit(model, data)

    def no_recompute(*args, **kwargs):
        raise AssertionError("the mask was recomputed on resume")

    monkeypatch.setattr(WeightSaliencyCallback, "compute_saliency", no_recompute)
    resumed_model = PlainClassifier("sgd")
    with torch.no_grad():  # a different starting point: resume must take everything from the checkpoint
        for p in resumed_model.parameters():
            p.add_(1.0)
    second = WeightSaliencyCallback()  # no forget data: the checkpoint has the mask
    trainer(max_epochs=3, callbacks=[second]).fit(resumed_model, data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert second.saliency_stats["source"] == "checkpoint"
    for name, param in resumed_model.named_parameters():
        mask = second.mask[name]
        assert torch.equal(mask, first.mask[name])
        assert torch.equal(param.detach()[~mask], start[name][~mask]), name


def test_kept_fraction_is_logged(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    callback = WeightSaliencyCallback(ratio=0.25, forget_dataloader=DataLoader(make_dataset(8, 1), batch_size=4))
    logger = CSVLogger(tmp_path, name="run")
    trainer(max_epochs=1, callbacks=[callback], limit_train_batches=1, logger=logger).fit(
        PlainClassifier(), DataLoader(make_dataset(8, 2), batch_size=4))
    lines = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("saliency/kept_fraction")
    assert float(lines[1].split(",")[column]) == pytest.approx(77 / 308)


def test_two_instances_have_distinct_state_keys():
    assert WeightSaliencyCallback(0.5).state_key != WeightSaliencyCallback(0.3).state_key


# ------------------------------------------------------------------------------------------------ distributed
class RankDump(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        saliency = next(c for c in trainer.callbacks if isinstance(c, WeightSaliencyCallback))
        params = {n: p.detach().cpu() for n, p in pl_module.named_parameters()}
        torch.save({"mask": saliency.mask, "params": params}, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


def test_ddp_mask_is_identical_on_every_rank_and_equals_single_process(tmp_path):
    forget = make_dataset(9, 1)  # batch 2 over two ranks: rank 0 gets 5 samples (3 batches), rank 1 gets 4 (2)
    model = PlainClassifier("sgd", unused_layer=True)
    start = snapshot(model)
    single = reference_mask(PlainClassifier("sgd", unused_layer=True), forget, 0.5)
    mask_file = tmp_path / "mask.safetensors"
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(forget, batch_size=2), save_mask_path=str(mask_file))
    fit = trainer(max_epochs=2, callbacks=[callback, RankDump(str(tmp_path))], strategy="ddp_spawn_find_unused_parameters_true", devices=2)
    fit.fit(model, DataLoader(make_dataset(32, 2), batch_size=4))
    _, metadata = load_mask(mask_file)  # the forget set's id is that of the whole (unsharded) forget loader
    assert metadata["forget_set"] == reference_batches_hash(DataLoader(forget, batch_size=2))
    assert metadata["parameter_hash"] == reference_parameter_hash(start)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, expected in single.items():
        assert torch.equal(ranks[0]["mask"][name], expected), name
        assert torch.equal(ranks[1]["mask"][name], expected), name
        mask = expected
        for rank in ranks:
            assert torch.equal(rank["params"][name][~mask], start[name][~mask]), name


def test_shard_sampler_is_disjoint_and_complete_without_padding():
    from salun_lightning.callbacks.weight_saliency.distributed import PartitionSampler as _ShardSampler

    shards = [list(_ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("ratio", [0, 0.0, -0.5, 1.01, True])
def test_ratio_error(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
        WeightSaliencyCallback(ratio=ratio)


def test_invalid_regex_error():
    with pytest.raises(ValueError, match=r"parameters: '\(' is not a valid regular expression"):
        WeightSaliencyCallback(parameters=["("])


def fit_with(callback, model=None):
    trainer(max_epochs=1, callbacks=[callback], limit_train_batches=1).fit(
        model or PlainClassifier(), DataLoader(make_dataset(8, 2), batch_size=4))


def test_no_forget_data_error():
    with pytest.raises(MisconfigurationException, match=r"forget_dataloader=\.\.\.\).*forget_dataloader\(\) method"):
        fit_with(WeightSaliencyCallback())


def test_forget_data_from_datamodule():
    forget = make_dataset(16, 1)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(make_dataset(8, 2), batch_size=4)

        def forget_dataloader(self):
            return DataLoader(forget, batch_size=4)

    callback = WeightSaliencyCallback()
    trainer(max_epochs=1, callbacks=[callback], limit_train_batches=1).fit(PlainClassifier(), datamodule=Data())
    expected = reference_mask(PlainClassifier(), forget, 0.5)
    for name, mask in expected.items():
        assert torch.equal(callback.mask[name], mask)


def test_empty_forget_loader_error():
    empty = DataLoader(TensorDataset(torch.zeros(0, FEATURES), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="the forget dataloader is empty"):
        fit_with(WeightSaliencyCallback(forget_dataloader=empty))


def test_non_finite_loss_error_names_the_batch():
    def loss_fn(module, batch):
        x, y = batch
        loss = F.cross_entropy(module(x), y)
        return loss * float("nan") if bool((x[:, 0] > 100).any()) else loss

    data = make_dataset(12, 1)
    data.tensors[0][9, 0] = 1000.0  # third batch of four
    with pytest.raises(ValueError, match=r"finite scalar, got nan on forget batch 2"):
        fit_with(WeightSaliencyCallback(forget_dataloader=DataLoader(data, batch_size=4), loss_fn=loss_fn))


def test_non_scalar_loss_error():
    def loss_fn(module, batch):
        x, y = batch
        return F.cross_entropy(module(x), y, reduction="none")

    with pytest.raises(ValueError, match=r"got a tensor of shape \(4,\) on forget batch 0"):
        fit_with(WeightSaliencyCallback(forget_dataloader=DataLoader(make_dataset(8, 1), batch_size=4), loss_fn=loss_fn))


class DictBatches(torch.utils.data.Dataset):
    """Forget samples as dicts whose first tensor is not per-sample, so Lightning's batch-size guess is wrong."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        x, y = self.data[index]
        return {"meta": torch.zeros(()), "x": x, "y": y}


def dict_loss(module, batch):
    return F.cross_entropy(module(batch["x"]), batch["y"])


def dict_batches(data: TensorDataset) -> DataLoader:
    return DataLoader(DictBatches(data), batch_size=8, collate_fn=lambda items: {
        "meta": torch.zeros(1), "x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])})


def test_batch_size_fn_weights_each_forget_batch_by_its_sample_count():
    forget = make_dataset(37, seed=1)  # batches of 8, 8, 8, 8 and 5
    expected = reference_mask(PlainClassifier(), forget, 0.5)
    counted = WeightSaliencyCallback(forget_dataloader=dict_batches(forget), loss_fn=dict_loss,
                                     batch_size_fn=lambda batch: len(batch["x"]))
    guessed = WeightSaliencyCallback(forget_dataloader=dict_batches(forget), loss_fn=dict_loss)
    fit_with(counted)
    fit_with(guessed)  # Lightning's guess takes "meta" (length 1): every batch weighs the same
    assert all(torch.equal(counted.mask[name], mask) for name, mask in expected.items())
    assert not all(torch.equal(guessed.mask[name], mask) for name, mask in expected.items())


def test_batch_size_fn_must_return_a_positive_int():
    callback = WeightSaliencyCallback(forget_dataloader=dict_batches(make_dataset(8, 1)), loss_fn=dict_loss,
                                      batch_size_fn=lambda batch: 0)
    with pytest.raises(ValueError, match=r"batch_size_fn must return a positive int, got 0 on forget batch 0"):
        fit_with(callback)


def test_filter_that_selects_nothing_error():
    with pytest.raises(MisconfigurationException, match=r"selects none of the 6 trainable parameters \(for example: body\.0\.weight"):
        fit_with(WeightSaliencyCallback(forget_dataloader=DataLoader(make_dataset(8, 1)), parameters=["unet"]))


def test_mask_file_mismatch_error_names_parameters_and_counts(tmp_path):
    model = PlainClassifier()
    mask = {f"model.{n}": torch.ones(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}
    mask["model.head.bias"] = torch.ones(7, dtype=torch.bool)
    path = tmp_path / "mask.pt"
    torch.save(mask, path)
    message = r"(?s)does not match.*6 missing: body\.0\.weight.*6 unexpected: model\.body\.0\.weight"
    with pytest.raises(ValueError, match=message):
        fit_with(WeightSaliencyCallback(mask_path=str(path)), model)
    mask = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}
    mask["head.bias"] = torch.ones(7, dtype=torch.bool)
    torch.save(mask, path)
    with pytest.raises(ValueError, match=re.escape("1 wrong shape: head.bias (mask (7,), parameter (4,))")):
        fit_with(WeightSaliencyCallback(mask_path=str(path)), model)


def test_file_that_is_not_a_mask_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a mask")
    with pytest.raises(ValueError, match="is not a mask file: it is neither safetensors nor a torch-saved dict"):
        load_mask(path)
    torch.save({"w": torch.tensor([0.5, 1.0])}, tmp_path / "floats.pt")
    with pytest.raises(ValueError, match="tensor 'w' holds values other than 0 and 1"):
        load_mask(tmp_path / "floats.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mask(tmp_path / "missing.safetensors")


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mask.pt"
    torch.save({"w": _RunsCode(str(marker))}, path)
    with pytest.raises(ValueError, match="is not a mask file"):
        load_mask(path)
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps({"w": _RunsCode(str(marker))}))
    with pytest.raises(ValueError, match="is not a mask file"):
        load_mask(legacy)
    assert not marker.exists()


class ManualClassifier(PlainClassifier):
    """Manual optimization: training_step steps the optimizer itself."""

    def __init__(self) -> None:
        super().__init__("sgd")
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss)
        optimizer.step()
        return loss


def test_manual_optimization_without_a_saliency_loss_is_refused_before_any_step():
    model = ManualClassifier()
    start = snapshot(model)
    message = re.escape(
        "ManualClassifier uses manual optimization, so WeightSaliencyCallback cannot use its training_step as the "
        "saliency loss (it would step the optimizer on forget data): pass WeightSaliencyCallback(loss_fn=...) or "
        "define saliency_loss(batch) on the module."
    )
    with pytest.raises(MisconfigurationException, match=message):
        fit_with(WeightSaliencyCallback(forget_dataloader=DataLoader(make_dataset(8, 1), batch_size=4)), model)
    for name, param in model.named_parameters():
        assert torch.equal(param.detach().view(torch.int32), start[name].view(torch.int32)), name


def test_manual_optimization_with_loss_fn_trains_under_the_mask():
    def loss_fn(module, batch):
        x, y = batch
        return F.cross_entropy(module(x), y)

    forget = make_dataset(16, 1)
    model = ManualClassifier()
    start = snapshot(model)
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(forget, batch_size=4), loss_fn=loss_fn)
    trainer(max_epochs=2, callbacks=[callback]).fit(model, DataLoader(make_dataset(32, 2), batch_size=8))
    moved = 0
    for name, expected in reference_mask(ManualClassifier(), forget, 0.5).items():
        assert torch.equal(callback.mask[name], expected), name
        param = model.get_parameter(name).detach()
        assert torch.equal(param[~expected], start[name][~expected]), name
        moved += int((param[expected] != start[name][expected]).sum())
    assert moved > 0.5 * callback.saliency_stats["kept"]


class TiedClassifier(pl.LightningModule):
    """hidden2.weight is hidden.weight: named_parameters() lists the shared tensor as hidden.weight only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(FEATURES, FEATURES)
        self.hidden2 = nn.Linear(FEATURES, FEATURES)
        self.hidden2.weight = self.hidden.weight
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden2(torch.tanh(self.hidden(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_a_tied_parameter_is_selected_by_any_of_its_names():
    forget = make_dataset(16, 1)
    reference = TiedClassifier()
    x, y = forget.tensors
    F.cross_entropy(reference(x), y, reduction="sum").backward()
    expected = brute_force_mask({"hidden.weight": reference.hidden.weight.grad.abs(),
                                 "hidden2.bias": reference.hidden2.bias.grad.abs()}, 0.5)
    model = TiedClassifier()
    start = snapshot(model)
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(forget, batch_size=4), parameters=[r"^hidden2\."])
    trainer(callbacks=[callback]).fit(model, DataLoader(make_dataset(32, 2), batch_size=8))
    assert list(callback.mask) == ["hidden.weight", "hidden2.bias"]  # the canonical (first) name of the shared tensor
    moved = 0
    for name, mask in expected.items():
        assert torch.equal(callback.mask[name], mask), name
        param = model.get_parameter(name).detach()
        assert torch.equal(param[~mask], start[name][~mask]), name
        moved += int((param[mask] != start[name][mask]).sum())
    assert moved > 0.5 * callback.saliency_stats["kept"]
    for name in ("hidden.bias", "head.weight", "head.bias"):
        assert torch.equal(model.get_parameter(name), start[name]), name


def test_missing_forget_data_is_an_error_before_any_step():
    model = PlainClassifier("adamw")
    start = snapshot(model)
    with pytest.raises(MisconfigurationException, match=r"needs forget data: pass WeightSaliencyCallback\(forget_dataloader"):
        trainer(callbacks=[WeightSaliencyCallback()]).fit(model, DataLoader(make_dataset(8, 2), batch_size=4))
    assert all(torch.equal(p.detach(), start[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_unsupported_strategy_error(strategy):
    import lightning.pytorch.strategies as strategies

    cls = getattr(strategies, strategy)
    callback = WeightSaliencyCallback(forget_dataloader=DataLoader(make_dataset(8, 1)))
    with pytest.raises(MisconfigurationException, match=rf"DDP and ModelParallelStrategy \(FSDP2\) strategies, not "
                                                        rf"{strategy}: .*fully_shard.*DeepSpeed are not supported"):
        callback.setup(type("T", (), {"strategy": cls.__new__(cls)})(), PlainClassifier(), "fit")


@pytest.mark.parametrize(("saliency_precision", "dtype"), [("float32", torch.float32), ("trainer", torch.bfloat16)])
def test_the_saliency_pass_is_float32_under_bf16_mixed_unless_told_otherwise(saliency_precision, dtype):
    forget = make_dataset(37, seed=1)
    dtypes = []

    def loss_fn(module, batch):
        logits = module(batch[0])
        dtypes.append(logits.dtype)
        return F.cross_entropy(logits.float(), batch[1])

    callback = WeightSaliencyCallback(ratio=0.5, forget_dataloader=DataLoader(forget, batch_size=8), loss_fn=loss_fn,
                                      saliency_precision=saliency_precision)
    model = PlainClassifier()
    trainer(max_epochs=1, callbacks=[callback], precision="bf16-mixed").fit(
        model, DataLoader(make_dataset(32, seed=2), batch_size=8))
    assert dtypes and set(dtypes) == {dtype}
    if saliency_precision == "float32":  # the float32 mask, exactly
        expected = reference_mask(PlainClassifier(), forget, 0.5)
        assert all(torch.equal(callback.mask[name], mask) for name, mask in expected.items())


def test_an_unknown_saliency_precision_is_refused():
    with pytest.raises(ValueError, match=r"saliency_precision must be one of float32, trainer, got 'bf16'"):
        WeightSaliencyCallback(saliency_precision="bf16")
