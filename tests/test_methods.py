"""The method interface and every method added to it: each one's step or update against a hand computation, the
saliency mask as a plug-in, refusals and bad hyper-parameters."""

from __future__ import annotations

import ast
import json
import typing
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from salun_lightning import ClassifierUnlearningModule, UnlearningDataModule
from salun_lightning.classifier import Method
from salun_lightning.methods import METHODS, build_method
from salun_lightning.methods.scrub import distillation_divergence
from salun_lightning.models import build_classifier

REPOSITORY = Path(__file__).resolve().parents[1]
MASKABLE = ["ft", "ga", "rl", "l1_sparse", "salun", "iu", "bs", "neggrad_plus", "scrub"]
REFUSING = {"train": "trains from fresh weights", "retrain": "trains from fresh weights", "be": "new output row",
            "salun_soft": "its own soft mask", "ssd": "multiplicative"}


def make_model(method: str, original: Path = None, **kwargs) -> ClassifierUnlearningModule:
    weights = None if original is None else str(original)
    return ClassifierUnlearningModule(method, model="small_resnet", num_classes=10, in_channels=1,
                                      original_weights=weights, **kwargs)


def make_data(model: ClassifierUnlearningModule, **kwargs) -> UnlearningDataModule:
    options = dict(dataset="digits", forget_fraction=0.1, seed=0, batch_size=64, stream=model.train_stream)
    options.update(kwargs)
    return UnlearningDataModule(**options)


def make_trainer(root: Path, **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, max_epochs=1, default_root_dir=str(root), logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    pl.seed_everything(0)
    model = make_model("train", lr=0.05)
    make_trainer(root, max_epochs=2).fit(model, make_data(model))
    return root / "model.safetensors"


def original_net(original: Path) -> torch.nn.Module:
    net = build_classifier("small_resnet", 10, 1)
    net.load_state_dict(load_file(str(original)))
    return net


def normalised(data: UnlearningDataModule, loader) -> list[dict]:
    return [data.on_after_batch_transfer(batch, 0) for batch in loader]


# ------------------------------------------------------------------------------------------------ the interface
def test_the_registry_the_cli_choices_and_the_configs_agree():
    assert tuple(METHODS) == typing.get_args(Method)
    for name, method in METHODS.items():
        assert method.name == name
        for dataset in ("digits", "cifar10"):
            config = REPOSITORY / "configs" / dataset / f"{name}.yaml"
            assert config.exists(), config
            assert f"model.init_args.method: {name}\n" in config.read_text(), config


def test_the_module_never_branches_on_a_method_name():
    tree = ast.parse((REPOSITORY / "salun_lightning" / "classifier.py").read_text())
    names = set(METHODS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            constants = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
            assert not constants & names, ast.unparse(node)


@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        ("neggrad_plus", {"beta": -0.1}, r"neggrad_plus: beta must be in \[0, 1\], got -0.1"),
        ("bs", {"epsilon": -0.1}, "bs: epsilon must be positive, got -0.1"),
        ("iu", {"alpha": -1.0}, "iu: alpha must be positive, got -1.0"),
        ("ssd", {"alpha": -1.0}, "ssd: alpha and lam must be positive"),
        ("scrub", {"alpha": -1.0}, "scrub: alpha and gamma must be non-negative"),
        ("l1_sparse", {"l1_alpha": -1.0}, "l1_sparse: l1_alpha must be non-negative"),
        ("salun_soft", {"ratio": 1.0}, r"salun_soft: ratio must be in \[0, 1\)"),
        ("rl", {"random_labels": "some"}, "rl: random_labels must be one of 'other', 'any', got 'some'"),
        ("scrub", {"msteps": 1.5}, "scrub: msteps must be a int, got 1.5"),
        ("ga", {"beta": 0.5}, "method 'ga' has no hyper-parameter 'beta'; its hyper-parameters are: none"),
        ("neggrad_plus", {"alpha": 0.5}, "has no hyper-parameter 'alpha'; its hyper-parameters are: beta"),
    ],
)
def test_bad_hyperparameters_are_refused_on_construction(method, args, message):
    with pytest.raises(ValueError, match=message):
        make_model(method, Path("x.safetensors"), method_args=args)


@pytest.mark.parametrize("method", sorted(REFUSING))
def test_methods_that_cannot_take_the_mask_say_why(method):
    weights = None if method in ("train", "retrain") else Path("x.safetensors")
    for mask in ({"saliency_ratio": 0.5}, {"mask_path": "m.safetensors"}):
        with pytest.raises(ValueError, match=rf"method '{method}' cannot take a saliency mask: .*{REFUSING[method]}"):
            make_model(method, weights, **mask)


def test_a_mask_file_without_a_ratio_is_refused_for_methods_without_a_default():
    with pytest.raises(ValueError, match="has no saliency mask by default: with mask_path or save_mask_path, set "
                                         "saliency_ratio too"):
        make_model("ft", Path("x.safetensors"), mask_path="m.safetensors")


@pytest.mark.parametrize("method", MASKABLE)
def test_every_method_that_takes_the_mask_leaves_non_salient_weights_bitwise_fixed(original, tmp_path, method):
    lr = 1e-4 if method == "bs" else 0.02
    model = make_model(method, original, saliency_ratio=0.3, lr=lr,
                       method_args={"msteps": 1} if method == "scrub" else None)
    make_trainer(tmp_path, limit_train_batches=3).fit(model, make_data(model))
    start, mask = load_file(str(original)), load_file(str(tmp_path / "mask.safetensors"))
    moved = 0
    for name, parameter in model.net.named_parameters():
        frozen = ~mask[f"net.{name}"]
        assert torch.equal(parameter.detach()[frozen], start[name][frozen]), name
        moved += int((parameter.detach()[~frozen] != start[name][~frozen]).sum())
    assert moved > 0  # the salient weights did change


# ------------------------------------------------------------------------------------------------ iu
def per_sample_gradients(net: torch.nn.Module, batches: list[dict], limit: int = None) -> list[torch.Tensor]:
    found = []
    for batch in batches:
        for image, label in zip(batch["image"], batch["label"]):
            net.zero_grad()
            F.cross_entropy(net(image[None]), label[None]).backward()
            found.append(torch.cat([p.grad.double().flatten() for p in net.parameters()]))
            if limit is not None and len(found) == limit:
                return found
    return found


def test_iu_is_one_step_along_the_official_recursion_of_the_scaled_gradient_difference(original, tmp_path):
    model = make_model("iu", original, method_args={"alpha": 0.5, "hessian_samples": 6})
    data = make_data(model, eval_batch_size=50)
    trainer = make_trainer(tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 0 and (tmp_path / "model.safetensors").exists()
    net = original_net(original).eval()
    forget = per_sample_gradients(net, normalised(data, data.forget_dataloader()))
    retain = per_sample_gradients(net, normalised(data, data.retain_dataloader()))
    n_f, n_r = len(forget), len(retain)
    v = n_f / (n_f + n_r) * (torch.stack(forget).mean(0) - torch.stack(retain).mean(0))
    # the recursion keeps o = c * g_1, so k = v - (sum of scalars) * g_1: follow the scalars only
    g1, scale, shift = retain[0], 1.0, 0.0
    for g in retain[1:8]:  # N + 2 = 8 samples: g_1, then 7 updates
        t = scale * (g1 @ g)
        k_dot_g = v @ g - shift * (g1 @ g)
        shift += k_dot_g / (6 + t) * scale
        scale -= t / (6 + t) * scale
    expected = 0.5 * (v - shift * g1)
    start = torch.cat([p.detach().double().flatten() for p in net.parameters()])
    after = torch.cat([p.detach().double().flatten() for p in model.net.parameters()])
    torch.testing.assert_close(after - start, expected, rtol=1e-4, atol=1e-6)
    direction = (after - start) / 0.5 - v  # the correction: along g_1 only
    assert torch.allclose(direction, (direction @ g1) / (g1 @ g1) * g1, atol=1e-6)


# ------------------------------------------------------------------------------------------------ ssd
def test_ssd_dampens_exactly_where_the_importance_ratio_exceeds_alpha(original, tmp_path):
    model = make_model("ssd", original, method_args={"alpha": 3.0, "lam": 0.5})
    data = make_data(model, eval_batch_size=100)
    make_trainer(tmp_path).fit(model, data)
    net = original_net(original).eval()

    def importance(batches):
        squares = []
        for batch in batches:
            net.zero_grad()
            F.cross_entropy(net(batch["image"]), batch["label"]).backward()
            squares.append([p.grad.square() for p in net.parameters()])
        return squares

    forget = importance(normalised(data, data.forget_dataloader()))
    retain = importance(normalised(data, data.retain_dataloader()))
    dampened = 0
    for i, ((name, start), after) in enumerate(zip(net.named_parameters(), model.net.parameters())):
        i_f = sum(s[i] for s in forget) / len(forget)
        i_d = (sum(s[i] for s in forget) + sum(s[i] for s in retain)) / (len(forget) + len(retain))
        selected = i_f > 3.0 * i_d
        factor = torch.clamp(0.5 * i_d / i_f, max=1.0)
        assert torch.equal(after.detach()[~selected], start.detach()[~selected]), name  # nowhere else
        torch.testing.assert_close(after.detach()[selected], start.detach()[selected] * factor[selected])
        dampened += int(selected.sum())
    assert dampened > 0


# ------------------------------------------------------------------------------------------------ bs
def test_bs_trains_on_the_frozen_models_label_for_the_fgsm_neighbour_in_pixel_space(original, tmp_path, monkeypatch):
    model = make_model("bs", original, lr=1e-3, method_args={"epsilon": 0.3})
    data = make_data(model)
    batches, targets = [], []
    step = model.training_step
    model.training_step = lambda batch, batch_idx: (batches.append({k: v.clone() for k, v in batch.items()}), step(batch, batch_idx))[1]
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, labels, *a, **k: (targets.append(labels.clone()),
                                                                            real(logits, labels, *a, **k))[1])
    make_trainer(tmp_path, limit_train_batches=2).fit(model, data)
    net = original_net(original).eval()
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    relabelled = 0
    for batch, trained in zip(batches, targets[1::2]):  # per step: the attack's loss, then the training loss
        assert batch["is_forget"].all()
        pixels = (batch["image"] * std + mean).requires_grad_(True)
        F.cross_entropy(net((pixels - mean) / std), batch["label"]).backward()
        neighbour = torch.round((pixels + 0.3 * pixels.grad.sign()).clamp(0, 1) * 255) / 255
        assert (neighbour - pixels).abs().max() <= 0.3 + 1 / 255
        expected = net((neighbour - mean) / std).argmax(1)
        assert torch.equal(trained, expected)
        relabelled += int((expected != batch["label"]).sum())
    assert relabelled > 0
    attacker = model.method.attacker
    assert not attacker.training and not any(p.requires_grad for p in attacker.parameters())
    assert all(torch.equal(a, b) for a, b in zip(attacker.state_dict().values(), net.state_dict().values()))
    assert not any(p.data_ptr() == q.data_ptr() for p in attacker.parameters() for q in model.net.parameters())


def test_bs_refuses_data_without_a_normalisation_before_the_fit():
    data = SimpleNamespace(batch_size=4)  # e.g. a plain LightningDataModule: no mean, no std
    with pytest.raises(ValueError, match="bs attacks in pixel space and needs the data's normalisation"):
        build_method("bs").check_fit(SimpleNamespace(datamodule=data))


# ------------------------------------------------------------------------------------------------ be
@pytest.mark.parametrize("prune", [False, True])
def test_be_trains_a_shadow_class_and_can_prune_it(original, tmp_path, prune):
    model = make_model("be", original, lr=0.05, method_args={"prune": prune})
    assert model.net.fc.out_features == 11
    start = original_net(original)
    fresh_row = model.net.fc.weight.detach()[10].clone()
    assert torch.equal(model.net.fc.weight.detach()[:10], start.fc.weight.detach())
    data = make_data(model)
    trainer = make_trainer(tmp_path, max_epochs=3)
    trainer.fit(model, data)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved["fc.weight"].shape == ((10, 64) if prune else (11, 64))
    trainer.test(model, data, verbose=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    if not prune:
        assert not torch.equal(saved["fc.weight"][10], fresh_row)  # the shadow row trained
        model.eval()
        with torch.no_grad():
            predicted = torch.cat([model(b["image"]).argmax(1) for b in normalised(data, data.forget_dataloader())])
        assert (predicted == 10).float().mean() > 0.5  # most forget samples went to the shadow class
        assert metrics["UA"] >= 50
    tested = make_model("be", original, method_args={"prune": prune})
    tested.load_model(str(tmp_path / "model.safetensors"))  # salun test: the saved head fits the module's
    assert tested.net.fc.out_features == (10 if prune else 11)


def test_be_with_a_mask_is_refused():
    with pytest.raises(ValueError, match="method 'be' cannot take a saliency mask: it trains a new output row"):
        make_model("be", Path("x.safetensors"), saliency_ratio=0.5)


# ------------------------------------------------------------------------------------------------ salun_soft
def test_salun_soft_resets_its_fraction_of_coordinates_to_the_epochs_start(original, tmp_path):
    model = make_model("salun_soft", original, lr=0.05, method_args={"ratio": 0.5})
    seen = []
    threshold = model.method.after_optimizer_step

    def recording(module):
        before = [p.detach().clone() for p in module.net.parameters()]
        threshold(module)
        seen.append((before, [p.detach().clone() for p in module.net.parameters()], module.method.anchors,
                     module.method.count))

    model.method.after_optimizer_step = recording
    make_trainer(tmp_path, limit_train_batches=4, max_epochs=2).fit(model, make_data(model, schedule="interleaved"))
    n = sum(p.numel() for p in model.net.parameters())
    assert [s[3] for s in seen] == [int(0.5 * (8 - 1) / 8 * n)] * 4 + [int(0.5 * (8 - 4 - 1) / 8 * n)] * 4
    for before, after, anchors, count in seen:
        delta = torch.cat([(b - a).flatten() for b, a in zip(before, anchors)])
        new = torch.cat([(x - a).flatten() for x, a in zip(after, anchors)])
        threshold_value = delta.abs().sort().values[count - 1]  # the count-th smallest change
        kept = delta.abs() > threshold_value
        assert (new[~kept] == 0).all()  # the count smallest changes (and ties with them) back at the anchor exactly
        assert count <= int((~kept).sum()) <= count * 1.001
        torch.testing.assert_close(new[kept], delta[kept] - delta[kept].sign() * threshold_value)


def test_salun_soft_refuses_the_sequential_schedule(original, tmp_path):
    model = make_model("salun_soft", original)
    with pytest.raises(ValueError, match="salun_soft shuffles D_f and D_r together, but the data module's schedule "
                                         "is 'sequential'"):
        make_trainer(tmp_path / "run").fit(model, make_data(model, schedule="sequential"))
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------------ scrub
def test_scrub_max_steps_raise_the_divergence_min_steps_lower_their_loss_teacher_unchanged(original, tmp_path):
    hp = {"msteps": 1, "alpha": 0.001, "gamma": 0.99}
    model = make_model("scrub", original, lr=0.01, method_args=hp)
    data = make_data(model)
    losses = []
    step = model.training_step
    model.training_step = lambda batch, batch_idx: (lambda loss: (losses.append((bool(batch["is_forget"].all()),
                                                                          None if loss is None else float(loss))), loss)[1])(step(batch, batch_idx))
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, data)
    forget_steps, retain_steps = 3, 21  # ceil(144 / 64), ceil(1298 / 64): epoch 0 both, epoch 1 D_r only
    assert trainer.global_step == 2 * (retain_steps + forget_steps)  # a skipped batch is a step that changes nothing
    assert [f for f, _ in losses] == ([True] * 3 + [False] * 21) * 2
    assert all(loss is None for _, loss in losses[24:27]) and all(loss is not None for _, loss in losses[27:])
    maxed = [loss for f, loss in losses[:3]]
    assert maxed[-1] < maxed[0] < 0  # -d falls: the divergence on D_f grows
    teacher, start = model.method.teacher, original_net(original).eval()
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), start.state_dict().values()))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    model.net.eval()
    with torch.no_grad():
        forget = normalised(data, data.forget_dataloader())
        before = sum(float(distillation_divergence(start(b["image"]), start(b["image"]), 4.0)) for b in forget)
        after = sum(float(distillation_divergence(model.net(b["image"]), start(b["image"]), 4.0)) for b in forget)
    assert before < 1e-5 and after > 0.1


def test_scrub_min_step_loss_is_the_weighted_sum(original, tmp_path):
    model = make_model("scrub", original, method_args={"msteps": 0, "alpha": 0.5, "gamma": 0.7})
    data = make_data(model)
    records = []
    step = model.training_step
    model.training_step = lambda batch, batch_idx: (lambda loss: (records.append((batch, loss)), loss)[1])(step(batch, batch_idx))
    make_trainer(tmp_path, limit_train_batches=4).fit(model, data)
    assert [loss is None for _, loss in records] == [True] * 3 + [False]  # msteps 0: D_f's 3 batches skipped
    batch, loss = records[3]
    assert not batch["is_forget"].any()
    student, teacher = original_net(original).train(), original_net(original).eval()
    with torch.no_grad():
        logits, target = student(batch["image"]), teacher(batch["image"])
        log_p = F.log_softmax(logits / 4, 1)
        kl = (F.softmax(target / 4, 1) * (F.log_softmax(target / 4, 1) - log_p)).sum(1).mean() * 16
        expected = 0.7 * F.cross_entropy(logits, batch["label"]) + 0.5 * kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_scrub_refuses_more_max_epochs_than_the_fit_has(original, tmp_path):
    model = make_model("scrub", original, method_args={"msteps": 3})
    with pytest.raises(ValueError, match=r"scrub: msteps \(3\) is larger than the fit's max_epochs \(2\)"):
        make_trainer(tmp_path / "run", max_epochs=2).fit(model, make_data(model))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ------------------------------------------------------------------------------------------------ neggrad_plus
def test_neggrad_plus_weighs_a_retain_batch_against_the_next_forget_batch(original, tmp_path):
    model = make_model("neggrad_plus", original, method_args={"beta": 0.8})
    data = make_data(model)
    records = []
    step = model.training_step
    model.training_step = lambda batch, batch_idx: (lambda loss: (records.append((batch, loss.detach())), loss)[1])(step(batch, batch_idx))
    trainer = make_trainer(tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 21  # an epoch of D_r (1,298 at 64), D_f (144) cycled beside it
    forget_seen = torch.cat([b["forget"]["index"] for b, _ in records])
    assert len(forget_seen) == 7 * 144 and set(forget_seen.tolist()) == set(data.split.forget.tolist())
    assert all(not b["retain"]["is_forget"].any() and b["forget"]["is_forget"].all() for b, _ in records)
    batch, loss = records[0]
    net = original_net(original).train()
    with torch.no_grad():
        retain = F.cross_entropy(net(batch["retain"]["image"]), batch["retain"]["label"])
        forget = F.cross_entropy(net(batch["forget"]["image"]), batch["forget"]["label"])
    torch.testing.assert_close(loss, 0.8 * retain - 0.2 * forget, rtol=1e-5, atol=1e-6)


def test_frozen_copies_are_no_submodules(original):
    for method, attribute in (("scrub", "teacher"), ("bs", "attacker")):
        model = make_model(method, original)
        frozen = getattr(model.method, attribute)
        assert all(frozen is not m for m in model.modules())
        assert len(list(model.parameters())) == len(list(model.net.parameters()))  # nothing optimised but the net
        assert all(k.startswith(("net.", "test_accuracy", "mia")) for k in model.state_dict())
        model.train()
        assert not frozen.training
