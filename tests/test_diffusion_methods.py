"""The diffusion methods' registry (salun_lightning/diffusion/methods): every config's method resolves, each says
its stream and whether it takes the mask, the model never compares a method's name, and a new method is one class
plus one registry entry."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import yaml

from salun_lightning.diffusion import (
    METHODS,
    ClassConditionalDiffusion,
    DiffusionUnlearningModule,
    TextToImageDiffusion,
)
from salun_lightning.diffusion.methods import ConceptErasure, DiffusionMethod
from tests import test_diffusion
from tests.test_diffusion import build, data

# test_diffusion.py's fixtures: one torch thread, the tiny tokenizer, and untrained 'original' models of each kind
one_thread, tokenizer, originals = test_diffusion.one_thread, test_diffusion.tokenizer, test_diffusion.originals

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "diffusion"
PACKAGE = ROOT / "salun_lightning" / "diffusion"
MODELS = {"ClassConditionalDiffusion": ClassConditionalDiffusion, "TextToImageDiffusion": TextToImageDiffusion}

# name: (stream, starts from the original, takes the saliency mask, text-to-image only)
EXPECTED = {
    "train": ("full", False, False, False),
    "retrain": ("retain", False, False, False),
    "ga": ("forget_retain", True, False, False),
    "rl": ("forget_retain", True, False, False),
    "salun": ("forget_retain", True, True, False),
    "esd_x": ("forget", True, False, True),
    "esd_u": ("forget", True, False, True),
    "fmn": ("forget", True, False, True),
    "relearn": ("forget", True, False, False),
}
ATTACKS = {"relearn"}  # run from an erased run's own config by `salun relearn`, not from a config of their own


def config_model(path: Path) -> tuple[str, Optional[str]]:
    """A config's model class name and method, whether written nested or with dotted keys (the class may come from
    the config it includes, ``config: <base>.yaml``)."""
    config = yaml.safe_load(path.read_text())
    model = config.get("model", {})
    class_path = model.get("class_path", config.get("model.class_path"))
    if class_path is None and "config" in config:
        class_path = config_model(path.parent / config["config"])[0]
    method = model.get("init_args", {}).get("method", config.get("model.init_args.method"))
    return class_path.rpartition(".")[2], method


def test_every_config_method_resolves_and_its_model_offers_it():
    methods = {path.name: config_model(path) for path in sorted(CONFIGS.glob("*.yaml"))}
    bases = {path.name for path in CONFIGS.glob("*.yaml") if methods[path.name][1] is None}
    assert bases == {"ddpm_digits_base.yaml"}  # included by the others, which set the method
    for name, (model, method) in methods.items():
        if name in bases:
            continue
        assert method in METHODS, name
        assert issubclass(METHODS[method], DiffusionMethod) and METHODS[method].name == method
        assert method in MODELS[model].methods, name
    assert {method for _, method in methods.values()} >= set(METHODS) - ATTACKS  # every method has a config


def test_each_method_declares_its_stream_origin_and_mask():
    assert list(METHODS) == list(EXPECTED)  # the order of the error messages
    for name, (stream, from_original, takes_mask, text_only) in EXPECTED.items():
        method = METHODS[name]
        assert (method.stream, method.from_original, method.takes_mask, method.erases_concept) == (
            stream, from_original, takes_mask, text_only), name
    assert set(ClassConditionalDiffusion.methods) == {name for name, row in EXPECTED.items() if not row[3]}
    assert TextToImageDiffusion.methods is METHODS


def test_hyperparameters_are_the_models_arguments_with_their_defaults():
    defaults = {name: parameter.default for model in (DiffusionUnlearningModule, TextToImageDiffusion)
                for name, parameter in inspect.signature(model.__init__).parameters.items()}
    for name, method in METHODS.items():
        for field in dataclasses.fields(method.Hyperparameters):
            assert field.name in defaults and field.default == defaults[field.name], (name, field.name)
    assert set(METHODS["esd_x"].Hyperparameters.search_space()) == {
        "esd_sampling_steps", "esd_sampling_guidance", "esd_eta"}


def string_constants(node: ast.AST) -> set[str]:
    return {child.value for child in ast.walk(node) if isinstance(child, ast.Constant) and isinstance(child.value, str)}


def test_the_module_never_compares_a_method_name():
    tree = ast.parse((PACKAGE / "module.py").read_text())
    compared = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            compared |= string_constants(node) & set(METHODS)
        elif isinstance(node, ast.Match):
            compared |= {name for case in node.cases for name in string_constants(case.pattern) & set(METHODS)}
    assert not compared, f"module.py branches on method names {sorted(compared)}: ask the method object instead"


def test_the_methods_do_not_import_the_module_at_import_time():
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # top level only: imports under `if TYPE_CHECKING:` are for type hints
            if isinstance(node, ast.ImportFrom):
                assert node.module != "salun_lightning.diffusion.module", path.name


class Blur(ConceptErasure):
    """A toy concept-erasure baseline: the concept prompt's prediction pulled towards the unconditional one."""

    name = "blur"

    def training_loss(self, module: Any, batch: dict[str, Any]) -> torch.Tensor:
        x_t, timesteps, _ = module._noised(batch["image"])
        count = len(x_t)
        with torch.no_grad():
            target = module.denoise(x_t, timesteps, module.encode_condition(module.null_condition(count)))
        prediction = module.denoise(x_t, timesteps, module.encode_condition([self.concept_prompt] * count))
        return (prediction - target).square().mean()


def test_a_new_method_is_one_class_and_one_registry_entry(originals, tokenizer, monkeypatch):
    monkeypatch.setitem(METHODS, "blur", Blur)
    model = build("text", "blur", originals, tokenizer)
    assert model.train_stream == "forget" and model.concept_prompt == "an image of 0"
    datamodule = data(stream="forget")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.forget_dataloader())), 0)
    loss = model.training_step(batch, 0)
    assert math.isfinite(float(loss.detach())) and loss.requires_grad
    assert model.run_record() == {"method": "blur", "forget_class": 0, "concept_prompt": "an image of 0"}
    with pytest.raises(ValueError, match="concept_prompt belongs to methods esd_x, esd_u, fmn and blur, not 'rl'"):
        build("text", "rl", originals, tokenizer, concept_prompt="an image of 0")
