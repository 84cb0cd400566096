"""Mask files: provenance written and checked, upstream SalUn files through prefix mappings, file errors."""

from __future__ import annotations

import re
from typing import Optional

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import salun_lightning.callbacks.weight_saliency.mask_files as weight_saliency
from salun_lightning.callbacks import WeightSaliencyCallback, load_mask, save_mask
from tests.test_weight_saliency_callback import (
    PlainClassifier,
    dict_batches,
    dict_loss,
    fit_with,
    make_dataset,
    reference_batches_hash,
    reference_parameter_hash,
    snapshot,
    trainer,
)

FIX = ("Recompute the mask for this run (`salun mask --out FILE`, or save_mask_path=...), or pass "
       "allow_mask_mismatch=True to use this mask on purpose.")


class ForgetData(pl.LightningDataModule):
    """Retain and forget loaders, with the forget set's identity when given."""

    def __init__(self, forget: TensorDataset, forget_set_id: Optional[str] = None,
                 description: Optional[str] = None) -> None:
        super().__init__()
        self.forget = forget
        if forget_set_id is not None:
            self.forget_set_id = forget_set_id
        if description is not None:
            self.forget_set_description = description

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_dataset(8, 2), batch_size=4)

    def forget_dataloader(self) -> DataLoader:
        return DataLoader(self.forget, batch_size=4)


def fit_data(callback: WeightSaliencyCallback, datamodule: pl.LightningDataModule, model=None) -> None:
    fit = trainer(max_epochs=1, callbacks=[callback], limit_train_batches=1)
    fit.fit(model or PlainClassifier(), datamodule=datamodule)


def read_metadata(path) -> dict[str, str]:
    return load_mask(path)[1]


@pytest.fixture
def infos(monkeypatch) -> list[str]:
    messages: list[str] = []
    monkeypatch.setattr(weight_saliency, "rank_zero_info", messages.append)
    return messages


def bitwise_equal(model: nn.Module, start: dict[str, torch.Tensor]) -> bool:
    params = model.named_parameters()
    return all(torch.equal(p.detach().view(torch.uint8), start[n].view(torch.uint8)) for n, p in params)


# ------------------------------------------------------------------------------------------------ provenance written
def test_mask_file_records_the_data_modules_forget_set_and_the_starting_weights(tmp_path):
    path = tmp_path / "mask.safetensors"
    start = snapshot(PlainClassifier())
    callback = WeightSaliencyCallback(ratio=0.25, save_mask_path=str(path))
    fit_data(callback, ForgetData(make_dataset(16, 1), "sha256:ab12", "class 3 of the digits"))
    metadata = read_metadata(path)
    assert set(metadata) == {"format", "N", "k", "parameter_signature", "forget_set", "forget_set_description",
                             "ratio", "parameter_hash", "loss", "model_class", "parameters"}
    assert metadata["forget_set"] == "sha256:ab12"
    assert metadata["forget_set_description"] == "class 3 of the digits"
    assert metadata["ratio"] == "0.25" and metadata["loss"] == "training_step"
    assert metadata["parameter_hash"] == reference_parameter_hash(start)


def test_mask_file_hashes_the_forget_batches_without_a_forget_set_id(tmp_path):
    path = tmp_path / "mask.safetensors"
    forget = make_dataset(20, 1)
    start = snapshot(PlainClassifier())
    callback = WeightSaliencyCallback(forget_dataloader=dict_batches(forget), loss_fn=dict_loss,
                                      save_mask_path=str(path), parameters=[r"^head\.", r"^body\.0\.bias"])
    # the callback's own loader is the forget data: the data module's id and description are not about it
    fit_data(callback, ForgetData(make_dataset(16, 3), "sha256:not-these", "not these"))
    metadata = read_metadata(path)
    assert metadata["forget_set"] == reference_batches_hash(dict_batches(forget))
    assert metadata["forget_set"] != reference_batches_hash(dict_batches(make_dataset(20, 5)))
    assert "forget_set_description" not in metadata
    selected = ("body.0.bias", "head.weight", "head.bias")  # selection order is the module's order
    assert metadata["parameter_hash"] == reference_parameter_hash({n: start[n] for n in selected})


def test_provenance_is_computed_only_for_a_mask_file(tmp_path, monkeypatch):
    calls = []

    def counted(name: str):
        original = getattr(weight_saliency, name)

        def hash_and_count(arg):
            calls.append(name)
            return original(arg)

        return hash_and_count

    for name in ("batches_hash", "parameter_hash"):
        monkeypatch.setattr(weight_saliency, name, counted(name))
    path = tmp_path / "mask.safetensors"
    fit_data(WeightSaliencyCallback(), ForgetData(make_dataset(16, 1)))
    assert calls == []
    fit_data(WeightSaliencyCallback(save_mask_path=str(path)), ForgetData(make_dataset(16, 1)))
    assert sorted(calls) == ["batches_hash", "parameter_hash"]
    calls.clear()
    fit_data(WeightSaliencyCallback(mask_path=str(path)), ForgetData(make_dataset(16, 1)))  # checked: recomputed
    assert sorted(calls) == ["batches_hash", "parameter_hash"]
    calls.clear()
    model = PlainClassifier()
    torch.save({n: torch.ones(p.shape, dtype=torch.long) for n, p in model.named_parameters()}, tmp_path / "up.pt")
    with pytest.warns(UserWarning, match="provenance is unknown"):
        fit_data(WeightSaliencyCallback(mask_path=str(tmp_path / "up.pt")), ForgetData(make_dataset(16, 1)), model)
    assert calls == []  # nothing recorded, nothing to check


# ------------------------------------------------------------------------------------------------ provenance checked
def test_a_mask_for_another_forget_set_is_refused_before_training(tmp_path):
    path = tmp_path / "mask.safetensors"
    first = WeightSaliencyCallback(save_mask_path=str(path))
    fit_data(first, ForgetData(make_dataset(16, 1), "sha256:aaa", "class 1"))
    model = PlainClassifier()
    start = snapshot(model)
    message = "\n".join([f"mask_path {str(path)!r} was made for another run:",
                         "  forget set: file sha256:aaa (class 1), this run sha256:bbb (class 2)", FIX])
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fit_data(WeightSaliencyCallback(mask_path=str(path)), ForgetData(make_dataset(16, 4), "sha256:bbb", "class 2"),
                 model)
    assert bitwise_equal(model, start)

    allowed = WeightSaliencyCallback(mask_path=str(path), allow_mask_mismatch=True)
    warning = re.escape(f"mask_path {str(path)!r} was made for another run; using it anyway (allow_mask_mismatch=True):"
                        "\n  forget set: file sha256:aaa (class 1), this run sha256:bbb (class 2)")
    with pytest.warns(UserWarning, match=warning):
        fit_data(allowed, ForgetData(make_dataset(16, 4), "sha256:bbb", "class 2"), model)
    assert all(torch.equal(allowed.mask[name], mask) for name, mask in first.mask.items())
    assert not bitwise_equal(model, start)


def test_a_mask_for_another_ratio_and_other_weights_is_refused(tmp_path, infos):
    path = tmp_path / "mask.safetensors"
    forget = DataLoader(make_dataset(16, 1), batch_size=4)
    fit_with(WeightSaliencyCallback(ratio=0.25, forget_dataloader=forget, save_mask_path=str(path)))
    model = PlainClassifier()
    file_hash = reference_parameter_hash(snapshot(model))
    with torch.no_grad():
        model.head.bias.add_(1.0)
    start = snapshot(model)
    message = "\n".join([
        f"mask_path {str(path)!r} was made for another run:",
        "  ratio: file 0.25, this run 0.5",
        f"  starting weights (parameter_hash): file {file_hash}, this run {reference_parameter_hash(start)}",
        FIX,
    ])
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fit_with(WeightSaliencyCallback(ratio=0.5, mask_path=str(path)), model)  # no forget data in this run
    assert bitwise_equal(model, start)
    forget_id = reference_batches_hash(forget)
    assert infos[-1:] == [f"WeightSaliency: this run has no forget data, so the forget set of mask_path {str(path)!r} "
                     f"({forget_id}) is not checked."]


def test_a_mask_for_this_run_loads_silently_and_keeps_its_provenance(tmp_path, recwarn):
    path, copy = tmp_path / "mask.safetensors", tmp_path / "copy.safetensors"
    data = ForgetData(make_dataset(16, 1), "sha256:aaa", "class 1")
    fit_data(WeightSaliencyCallback(ratio=0.3, save_mask_path=str(path)), data)
    loaded = WeightSaliencyCallback(ratio=0.3, mask_path=str(path), save_mask_path=str(copy))
    fit_data(loaded, data)
    assert not [w for w in recwarn if "mask_path" in str(w.message)]
    original, copied = read_metadata(path), read_metadata(copy)
    for key in ("forget_set", "forget_set_description", "ratio", "parameter_hash", "k", "parameter_signature"):
        assert copied[key] == original[key], key
    assert copied["loss"] == f"loaded from {path}"


# ------------------------------------------------------------------------------------------------ upstream files
class NetModule(pl.LightningModule):
    """A network held as ``self.net``, as the project's classifier holds it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def upstream_file(net: nn.Module, path, prefix: str = "") -> dict[str, torch.Tensor]:
    """A mask file as the official SalUn code writes it: torch.save of {name: 0/1 int64 tensor}."""
    mask = {prefix + name: (torch.rand(p.shape) > 0.5).long() for name, p in net.named_parameters()}
    torch.save(mask, path)
    return mask


def assert_trained_under(module: nn.Module, start: dict, mask: dict[str, torch.Tensor]) -> None:
    moved = 0
    for name, param in module.named_parameters():
        kept = mask[name]
        assert torch.equal(param.detach()[~kept].view(torch.int32), start[name][~kept].view(torch.int32)), name
        moved += int((param.detach()[kept] != start[name][kept]).sum())
    assert moved > 0


def test_an_upstream_resnet18_mask_loads_onto_self_net(tmp_path, infos):
    from salun_lightning.models import cifar_resnet18

    torch.manual_seed(0)
    module = NetModule(cifar_resnet18(10))
    saved = upstream_file(module.net, tmp_path / "with_0.5.pt")
    assert len(saved) == 62 and "conv1.weight" in saved
    start = snapshot(module)
    callback = WeightSaliencyCallback(mask_path=str(tmp_path / "with_0.5.pt"))
    images = TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    with pytest.warns(UserWarning, match="provenance is unknown"):
        trainer(max_epochs=1, callbacks=[callback]).fit(module, DataLoader(images, batch_size=2))
    assert list(callback.mask) == [f"net.{name}" for name in saved]
    for name, value in saved.items():
        assert torch.equal(callback.mask[f"net.{name}"], value.bool()), name
    path = str(tmp_path / "with_0.5.pt")
    assert f"WeightSaliency: mask_path {path!r}: mask names mapped: removed '', added 'net.'." in infos
    assert_trained_under(module, start, callback.mask)


class UNetModule(pl.LightningModule):
    """A denoiser held as ``self.unet``, as the project's diffusion module holds it."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        self.unet = UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
        )

    def training_step(self, batch, batch_idx):
        (images,) = batch
        noise = torch.randn_like(images)
        return F.mse_loss(self.unet(images + noise, torch.full((len(images),), 10)).sample, noise)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_an_upstream_ddpm_mask_with_module_prefix_loads_onto_self_unet(tmp_path, infos):
    module = UNetModule()
    saved = upstream_file(module.unet, tmp_path / "mask.pt", prefix="module.")
    start = snapshot(module)
    callback = WeightSaliencyCallback(mask_path=str(tmp_path / "mask.pt"), parameters=[r"^unet\."])
    with pytest.warns(UserWarning, match="provenance is unknown"):
        trainer(max_epochs=1, callbacks=[callback]).fit(module, DataLoader(TensorDataset(torch.randn(4, 1, 8, 8)), 2))
    assert list(callback.mask) == [f"unet.{name.removeprefix('module.')}" for name in saved]
    for name, value in saved.items():
        assert torch.equal(callback.mask["unet." + name.removeprefix("module.")], value.bool()), name
    assert any(m.endswith("mask names mapped: removed 'module.', added 'unet.'.") for m in infos)
    assert_trained_under(module, start, callback.mask)


NO_MAPPING = ("No single prefix mapping fits either (removing, then adding, one of '', 'module.', 'net.', 'model.', "
              "'unet.' on every name).")


def test_a_mask_no_single_prefix_mapping_fits_is_refused(tmp_path):
    model = PlainClassifier()
    start = snapshot(model)
    torch.save({f"backbone.{n}": torch.ones(p.shape, dtype=torch.long) for n, p in model.named_parameters()},
               tmp_path / "other.pt")
    message = "\n".join([
        f"the mask from mask_path {str(tmp_path / 'other.pt')!r} does not match the model's selected parameters:",
        "  6 missing: body.0.weight, body.0.bias, body.1.weight, body.1.bias, head.weight, ...",
        "  6 unexpected: backbone.body.0.weight, backbone.body.0.bias, backbone.body.1.weight, "
        "backbone.body.1.bias, backbone.head.weight, ...",
        NO_MAPPING,
        "Compute the mask for this model (or check the `parameters` filter).",
    ])
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fit_with(WeightSaliencyCallback(mask_path=str(tmp_path / "other.pt")), model)
    assert bitwise_equal(model, start)

    # bare and "net."-prefixed names both present: no mapping is one-to-one, so nothing is guessed
    module = NetModule(nn.Linear(3, 2))
    both = {name: torch.ones(p.shape, dtype=torch.long) for name, p in module.net.named_parameters()}
    torch.save({**both, **{f"net.{name}": value for name, value in both.items()}}, tmp_path / "both.pt")
    message = re.escape("  2 unexpected: weight, bias\n" + NO_MAPPING)
    with pytest.raises(ValueError, match=message):
        trainer(max_epochs=1, callbacks=[WeightSaliencyCallback(mask_path=str(tmp_path / "both.pt"))]).fit(
            module, DataLoader(TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), batch_size=2))


# ------------------------------------------------------------------------------------------------ file errors
def test_file_errors_name_mask_path_and_the_file(tmp_path):
    model = PlainClassifier()
    path = tmp_path / "mask.safetensors"
    save_mask(path, {n: torch.ones(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}, {"ratio": 0.5})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    damaged = (re.escape(f"{str(path)!r} is not a mask file: it is a damaged safetensors file (") + ".+"
               + re.escape("); it may be truncated or still being written: write it again."))
    with pytest.raises(ValueError, match=f"^mask_path: {damaged}$"):
        fit_with(WeightSaliencyCallback(mask_path=str(path)), model)
    with pytest.raises(ValueError, match=f"^{damaged}$"):
        load_mask(path)

    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(f"mask_path: mask file {str(missing)!r} does not exist")):
        fit_with(WeightSaliencyCallback(mask_path=str(missing)), model)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, not a mask")
    with pytest.raises(ValueError, match=re.escape(f"mask_path: {str(notes)!r} is not a mask file: it is neither")):
        fit_with(WeightSaliencyCallback(mask_path=str(notes)), model)
