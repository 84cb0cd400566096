"""Diffusion unlearning: both conditionings, every method, the saliency mask, sampling, diffusers files, bad input."""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from PIL import Image
from torch.nn import functional as F

from salun_lightning.callbacks import WeightSaliencyCallback, load_mask
from salun_lightning.cli import run as salun
from salun_lightning.diffusion import (
    ClassConditionalDiffusion,
    DiffusionDataModule,
    TextToImageDiffusion,
    denoising_target,
    sample_images,
    to_diffusion_range,
    write_samples,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "diffusion"
SCHEDULER = {"num_train_timesteps": 100}
PIXEL_UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 4,
}
LATENT_UNET = {
    "sample_size": 4,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 16,
    "attention_head_dim": 4,
    "norm_num_groups": 4,
}
VAE = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
TEXT_ENCODER = {
    "vocab_size": 514,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 24,
    "bos_token_id": 512,
    "eos_token_id": 513,
    "pad_token_id": 513,
}
UNLEARNING = ("ga", "rl", "salun")
# What the salun command line links from the digits data module (forget digit 0, 8x8 images).
DIGITS = {"forget_class": 0, "image_shape": (1, 8, 8)}
NAMES, PROMPTS = [str(c) for c in range(10)], [f"an image of {c}" for c in range(10)]


def write_tokenizer(directory: Path) -> Path:
    """A byte-level CLIP BPE vocabulary (every byte alone and word-final, no merges), saved as a tokenizer folder."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=24)
    tokenizer.save_pretrained(directory)
    return directory


def data(**kwargs) -> DiffusionDataModule:
    module = DiffusionDataModule(**{"dataset": "digits", "forget_class": 0, "image_size": 8, "batch_size": 8,
                                    "eval_batch_size": 72, **kwargs})
    module.setup("fit")
    return module


def pixel_model(method: str = "train", **kwargs) -> ClassConditionalDiffusion:
    parts = {"unet": PIXEL_UNET, "scheduler": SCHEDULER} if method in ("train", "retrain") else {}
    return ClassConditionalDiffusion(method=method, num_classes=10, **{**DIGITS, **parts, **kwargs})


def text_model(tokenizer: Path, method: str = "train", **kwargs) -> TextToImageDiffusion:
    if method in ("train", "retrain"):
        parts = {"unet": LATENT_UNET, "vae": VAE, "text_encoder": TEXT_ENCODER, "tokenizer": str(tokenizer),
                 "scheduler": SCHEDULER}
    else:
        parts = {}
    return TextToImageDiffusion(method=method, **{**DIGITS, "class_names": NAMES, "class_prompts": PROMPTS, **parts,
                                                  **kwargs})


def fit(model, datamodule, root: Path, steps: int = 1, **trainer_args) -> Trainer:
    datamodule.hparams.stream = model.train_stream  # as the salun command line links it
    trainer = Trainer(**{"accelerator": "cpu", "devices": 1, **trainer_args}, max_steps=steps, default_root_dir=root,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule)
    return trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and many times slower with several threads on busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def originals(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Diffusers directories of an untrained 'original' model of each kind (every part, like a train run writes)."""
    torch.manual_seed(0)
    roots = {"pixel": tmp_path_factory.mktemp("pixel"), "text": tmp_path_factory.mktemp("text")}
    pixel_model().save_components(roots["pixel"])
    text_model(tokenizer).save_components(roots["text"])
    return roots


def build(kind: str, method: str, originals, tokenizer, **kwargs):
    if method not in ("train", "retrain"):
        kwargs["pretrained"] = str(originals[kind])
    return pixel_model(method, **kwargs) if kind == "pixel" else text_model(tokenizer, method, **kwargs)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().view(torch.int32)


# ---------------------------------------------------------------------------------------------------- data
def test_images_are_scaled_resized_and_labelled():
    images = to_diffusion_range(torch.tensor([[[[0, 255], [255, 0]]]], dtype=torch.uint8), size=4, channels=3)
    assert images.shape == (1, 3, 4, 4) and images.min() >= -1 and images.max() <= 1
    datamodule = data(image_size=16, prompt_template="a {class}")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.forget_dataloader())), 0)
    assert batch["image"].shape == (72, 1, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["class"].dtype == torch.int64 and set(batch["class"].tolist()) == {0}
    assert batch["prompt"][0] == "a 0" and datamodule.image_shape == (1, 16, 16)
    retain = next(iter(datamodule.retain_dataloader()))
    assert 0 not in retain["class"].tolist()


def test_salun_and_rl_get_a_forget_and_a_retain_batch_every_step():
    datamodule = data(stream="forget_retain")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader()))[0], 0)
    assert set(batch) == {"forget", "retain"}
    assert set(batch["forget"]["class"].tolist()) == {0} and 0 not in batch["retain"]["class"].tolist()
    assert batch["retain"]["image"].dtype == torch.float32


def test_prompts_come_from_a_csv_for_an_image_folder(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            Image.new("L", (8, 8), 100).save(tmp_path / "images" / split / name / "a.png")
    with open(tmp_path / "prompts.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([["file", "caption"], ["cat/a.png", "a cat on a mat"], ["dog/a.png", "a dog"]])
    arguments = {"dataset": "image_folder", "data_path": str(tmp_path / "images"), "cache_dir": str(tmp_path / "cache"),
                 "prompts_csv": str(tmp_path / "prompts.csv"), "forget_class": "dog", "batch_size": 2}
    datamodule = DiffusionDataModule(**arguments, prompt_column="caption")
    datamodule.setup("fit")
    assert next(iter(datamodule.forget_dataloader()))["prompt"] == ["a dog"]
    assert datamodule.class_prompts == ["a cat on a mat", "a dog"]  # each class's one prompt
    assert datamodule.template_prompts == ["an image of cat", "an image of dog"]
    with pytest.raises(ValueError, match="no column 'prompt'.*set prompt_column"):
        DiffusionDataModule(**arguments).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"prompts_csv '.*missing.csv' does not exist"):
        DiffusionDataModule(**{**arguments, "prompts_csv": str(tmp_path / "missing.csv")}).setup("fit")
    with open(tmp_path / "prompts.csv", "w", newline="") as stream:  # an empty prompt would train the null condition
        csv.writer(stream).writerows([["file", "caption"], ["cat/a.png", "a cat on a mat"], ["dog/a.png", "  "]])
    with pytest.raises(ValueError, match=r"prompts.csv, line 3: the prompt \('caption'\) of dog/a.png is empty: an "
                                         r"empty prompt is the unconditional prompt, so that image would train"):
        DiffusionDataModule(**arguments, prompt_column="caption").setup("fit")


# ---------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["pixel", "text"])
@pytest.mark.parametrize("method", ["train", "retrain", "ga", "rl", "salun"])
def test_one_step_of_every_method(kind, method, originals, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build(kind, method, originals, tokenizer)
    before = copy.deepcopy(model.unet.state_dict())
    trainer = fit(model, data(), tmp_path)
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(before[name], value) for name, value in model.unet.state_dict().items())
    assert (tmp_path / "unet" / "config.json").is_file()
    assert json.loads((tmp_path / "run.json").read_text())["method"] == method
    if method in ("ga", "rl", "salun"):
        assert {"train/forget_loss", "train/retain_loss"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("kind", ["pixel", "text"])
@pytest.mark.parametrize("scale", [{}, {"precision": "bf16-mixed", "gradient_checkpointing": True, "ema_decay": 0.9}],
                         ids=["fp32", "bf16-checkpointing-ema"])
def test_salun_moves_only_salient_denoiser_weights_and_never_the_frozen_parts(kind, scale, originals, tokenizer,
                                                                              tmp_path):
    torch.manual_seed(0)
    precision = scale.get("precision", "32-true")
    model = build(kind, "salun", originals, tokenizer, lr=1e-2, weight_decay=1e-2,
                  gradient_checkpointing=scale.get("gradient_checkpointing", False), ema_decay=scale.get("ema_decay"))
    assert model.unet.is_gradient_checkpointing == ("gradient_checkpointing" in scale)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = fit(model, data(), tmp_path, steps=3, precision=precision)
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    (callback,) = [c for c in trainer.callbacks if isinstance(c, WeightSaliencyCallback)]
    assert set(callback.mask) == {name for name in start if name.startswith("unet.")}
    moved = 0
    for name, param in model.named_parameters():
        if name in callback.mask:
            mask = callback.mask[name]
            assert torch.equal(bits(param)[~mask], bits(start[name])[~mask]), name
            moved += int((bits(param)[mask] != bits(start[name])[mask]).sum())
        else:
            assert not param.requires_grad and torch.equal(bits(param), bits(start[name])), name
    assert moved > 0
    assert all(not part.training for part in model.frozen_modules())


class DumpRankState(Callback):
    """Each rank writes its mask and denoiser weights at the end of training."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        (saliency,) = [c for c in trainer.callbacks if isinstance(c, WeightSaliencyCallback)]
        state = {"mask": saliency.mask, "params": {n: p.detach().clone() for n, p in pl_module.unet.named_parameters()}}
        torch.save(state, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def test_salun_under_ddp_keeps_one_mask_and_one_model_on_every_rank(originals, tmp_path):
    torch.manual_seed(0)
    model = build("pixel", "salun", originals, None, lr=1e-2)
    start = {name: p.detach().clone() for name, p in model.unet.named_parameters()}
    fit(model, data(), tmp_path, steps=2, strategy="ddp_spawn", devices=2, callbacks=[DumpRankState(str(tmp_path))])
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    moved = 0
    for name, begin in start.items():
        mask = ranks[0]["mask"][f"unet.{name}"]
        assert torch.equal(ranks[1]["mask"][f"unet.{name}"], mask), name
        assert torch.equal(bits(ranks[0]["params"][name]), bits(ranks[1]["params"][name])), name
        assert torch.equal(bits(ranks[0]["params"][name])[~mask], bits(begin)[~mask]), name
        moved += int((ranks[0]["params"][name][mask] != begin[mask]).sum())
    assert moved > 0


@pytest.mark.parametrize("kind", ["pixel", "text"])
def test_the_forget_loss_target_carries_no_gradient(kind, originals, tokenizer):
    model = build(kind, "rl", originals, tokenizer)
    datamodule = data()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.forget_dataloader())), 0)
    params = [p for p in model.unet.parameters()]

    def manual(detach: bool) -> torch.Tensor:
        torch.manual_seed(1)  # the draws of forget_loss, in its order: image encoding, noise, timesteps
        x0 = model.to_model_space(batch["image"])
        noise = torch.randn_like(x0)
        t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (len(x0),))
        x_t = model.noise_scheduler.add_noise(x0, noise, t)
        target = model.denoise(x_t, t, model.encode_condition(model.pseudo_condition(batch)))
        prediction = model.denoise(x_t, t, model.encode_condition(batch[model.condition_key]))
        return F.mse_loss(prediction, target.detach() if detach else target)

    torch.manual_seed(1)
    grads = torch.autograd.grad(model.forget_loss(batch), params)
    detached = torch.autograd.grad(manual(detach=True), params)
    through_target = torch.autograd.grad(manual(detach=False), params)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads, detached))
    assert not all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads, through_target))


class RecordWeights(Callback):
    """The denoiser's weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({n: p.detach().clone() for n, p in pl_module.unet.named_parameters()})


def test_the_saved_denoiser_is_the_moving_average_of_the_steps(tmp_path):
    record = RecordWeights()
    torch.manual_seed(0)
    fit(pixel_model(lr=1e-2), data(), tmp_path / "last", steps=4, callbacks=[record])
    torch.manual_seed(0)
    averaged = pixel_model(lr=1e-2, ema_decay=0.5)
    fit(averaged, data(), tmp_path / "ema", steps=4)
    expected = dict(record.steps[0])  # diffusers' warm-up: decay min(0.5, (1 + n) / (10 + n)), 0 at the first step
    for n, weights in enumerate(record.steps[1:], start=1):
        decay = min(0.5, (1 + n) / (10 + n))
        expected = {name: decay * expected[name] + (1 - decay) * value for name, value in weights.items()}
    saved = ClassConditionalDiffusion.unet_class.from_pretrained(tmp_path / "ema" / "unet")
    for name, value in expected.items():
        assert torch.allclose(averaged.unet.state_dict()[name], value, atol=1e-6), name
        assert torch.equal(saved.state_dict()[name], averaged.unet.state_dict()[name]), name
    assert not torch.allclose(record.steps[-1]["conv_in.weight"], expected["conv_in.weight"])


def test_the_moving_average_goes_into_checkpoints_and_comes_back():
    model = pixel_model(ema_decay=0.9)
    model.on_fit_start()
    with torch.no_grad():
        for param in model.unet.parameters():
            param.add_(1.0)
    model._ema.step(model.unet.parameters())
    model._ema.step(model.unet.parameters())
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    resumed = pixel_model(ema_decay=0.9)
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_fit_start()
    assert resumed._ema.optimization_step == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed._ema.shadow_params, model._ema.shadow_params))
    assert not all(torch.equal(a, b) for a, b in zip(resumed._ema.shadow_params, resumed.unet.parameters()))


def test_v_prediction_trains_against_the_velocity(tmp_path):
    model = pixel_model(scheduler={**SCHEDULER, "prediction_type": "v_prediction"})
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 50, 99])
    velocity = model.noise_scheduler.get_velocity(x0, noise, t)
    assert torch.equal(denoising_target(model.noise_scheduler, x0, noise, t), velocity)
    assert math.isfinite(fit(model, data(), tmp_path).callback_metrics["train/loss"])


def test_the_sum_reduction_sums_the_squared_error_over_each_sample(originals, tokenizer):
    datamodule = data()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.retain_dataloader())), 0)
    losses = []
    for reduction in ("mean", "sum"):
        torch.manual_seed(0)
        losses.append(build("pixel", "rl", originals, tokenizer, denoising_reduction=reduction).denoising_loss(batch))
    assert torch.allclose(losses[1], losses[0] * 64)  # 1x8x8 elements per sample


@pytest.mark.parametrize("kind", ["pixel", "text"])
def test_the_saliency_loss_guides_by_default_as_the_reference_code(kind, originals, tokenizer):
    model = build(kind, "salun", originals, tokenizer)
    assert model.hparams.saliency_guidance is None and model.saliency_guidance == {"pixel": 2.0, "text": 7.5}[kind]
    datamodule = data()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.forget_dataloader())), 0)
    torch.manual_seed(0)
    loss = model.saliency_loss(batch)
    torch.manual_seed(0)  # by hand, with the same draws: x_t, then the two predictions
    x_t, t, target = model._noised(batch["image"])
    conditional = model.denoise(x_t, t, model.encode_condition(batch[model.condition_key]))
    unconditional = model.denoise(x_t, t, model.encode_condition(model.null_condition(len(x_t))))
    w = model.saliency_guidance
    guided = (1 + w) * conditional - w * unconditional
    assert torch.allclose(loss, model._denoising_error(guided, target), rtol=1e-5)
    unguided = build(kind, "salun", originals, tokenizer, saliency_guidance=0.0)
    torch.manual_seed(0)
    plain = unguided.saliency_loss(batch)
    assert unguided.hparams.saliency_guidance == 0.0
    assert torch.allclose(plain, model._denoising_error(conditional, target), rtol=1e-5)
    assert not torch.allclose(plain, loss)


def test_pseudo_classes_differ_from_the_forgotten_class(originals, tokenizer):
    model = build("pixel", "rl", originals, tokenizer, pseudo="random")
    classes = torch.zeros(500, dtype=torch.long)
    pseudo = model.pseudo_condition({"class": classes})
    assert (pseudo != 0).all() and set(pseudo.tolist()) == set(range(1, 10))
    text = build("text", "rl", originals, tokenizer)
    assert text.pseudo_condition({"class": classes[:2]}) == ["an image of 1"] * 2


# ---------------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kind", ["pixel", "text"])
def test_sampling_is_deterministic_under_a_seed(kind, originals, tokenizer):
    model = build(kind, "salun", originals, tokenizer)
    conditions = model.class_condition(torch.tensor([0, 3, 3, 7]))
    first = sample_images(model, conditions, seed=5, steps=2, batch_size=4)
    assert first.shape == (4, *model.image_shape) and 0 <= first.min() and first.max() <= 1
    assert torch.allclose(first, sample_images(model, conditions, seed=5, steps=2, batch_size=3), atol=1e-5)
    assert not torch.allclose(first, sample_images(model, conditions, seed=6, steps=2, batch_size=4))
    assert model.training  # the mode is restored


# ---------------------------------------------------------------------------------------------------- files
def test_a_saved_denoiser_loads_back_strictly(originals, tmp_path):
    from diffusers import UNet2DModel

    model = pixel_model()
    model.save_components(tmp_path)
    reloaded = UNet2DModel.from_pretrained(tmp_path / "unet")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.unet.state_dict().items())
    other = build("pixel", "salun", originals, None)
    other.load_unet(str(tmp_path / "unet"))
    assert all(torch.equal(v, other.unet.state_dict()[k]) for k, v in model.unet.state_dict().items())
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_out.weight"]
    save_file(state, weights)
    with pytest.raises(ValueError, match="missing.*conv_out.weight"):
        other.load_unet(str(tmp_path / "unet"))


def test_a_run_directory_holds_every_part_not_taken_from_pretrained(originals, tokenizer, tmp_path):
    from transformers import CLIPTextModel

    separate = text_model(tokenizer, vae=str(originals["text"] / "vae"),
                          text_encoder=str(originals["text"] / "text_encoder"))
    separate.save_components(tmp_path / "separate")
    reloaded = CLIPTextModel.from_pretrained(tmp_path / "separate" / "text_encoder")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in separate.text_encoder.state_dict().items())
    assert (tmp_path / "separate" / "vae" / "config.json").is_file()
    build("text", "salun", originals, tokenizer).save_components(tmp_path / "unlearned")
    assert sorted(p.name for p in (tmp_path / "unlearned").iterdir()) == ["scheduler", "tokenizer", "unet"]


def test_the_unlearned_latent_model_runs_in_a_stable_diffusion_pipeline(originals, tokenizer, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    model = build("text", "salun", originals, tokenizer)
    fit(model, data(), tmp_path)
    pipeline = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=UNet2DConditionModel.from_pretrained(tmp_path / "unet"),
        scheduler=DDIMScheduler.from_config(model.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    image = pipeline("an image of 3", num_inference_steps=2, height=8, width=8, output_type="pt",
                     generator=generator).images
    assert image.shape == (1, 1, 8, 8) and torch.isfinite(image).all()


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_data_arguments_fail_with_a_fix():
    with pytest.raises(ValueError, match="unknown forget_class 12"):
        DiffusionDataModule("digits", forget_class=12)
    with pytest.raises(ValueError, match="unknown forget_class 'ten'"):
        DiffusionDataModule("digits", forget_class="ten")
    with pytest.raises(ValueError, match="prompt_template"):
        DiffusionDataModule("digits", prompt_template="an image of {label}")


def test_bad_model_arguments_fail_before_training(originals, tokenizer):
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        build("pixel", "salun", originals, tokenizer, alpha=-1.0)
    with pytest.raises(ValueError, match="unknown prediction_type 'sample'"):
        pixel_model(scheduler={"prediction_type": "sample"})
    with pytest.raises(ValueError, match="no prompts.*pseudo 'next'"):
        build("pixel", "rl", originals, tokenizer, pseudo="prompt")
    with pytest.raises(ValueError, match="unlearns a trained denoiser"):
        pixel_model("salun", unet=PIXEL_UNET)
    with pytest.raises(ValueError, match="num_class_embeds is 5"):
        pixel_model(unet={**PIXEL_UNET, "num_class_embeds": 5})
    with pytest.raises(ValueError, match="pseudo_class goes with pseudo='class'"):
        build("pixel", "rl", originals, tokenizer, pseudo_class=3)
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\) or None"):
        pixel_model(ema_decay=1.0)


def test_the_base_module_names_what_a_conditioning_must_define():
    from salun_lightning.diffusion.module import DiffusionUnlearningModule

    with pytest.raises(TypeError, match="abstract methods.*denoise.*encode_condition.*image_shape"):
        DiffusionUnlearningModule(method="train")


def test_a_pseudo_class_equal_to_the_forgotten_one_is_refused(originals, tokenizer):
    for kind in ("pixel", "text"):
        with pytest.raises(ValueError, match="is the forgotten class itself"):
            build(kind, "rl", originals, tokenizer, pseudo="class", pseudo_class="0")
    with pytest.raises(ValueError, match="forgotten class's own prompt"):
        build("text", "rl", originals, tokenizer, pseudo="prompt", anchor_prompt="an image of 0")


def test_unlearning_needs_the_forgotten_class_and_text_pseudo_classes_need_prompts(originals, tokenizer):
    with pytest.raises(ValueError, match=r"method 'salun' needs a forgotten class: set forget_class"):
        build("pixel", "salun", originals, tokenizer, forget_class=None)
    with pytest.raises(ValueError, match=r"pseudo='next' conditions on other classes' prompts: give class_prompts"):
        build("text", "salun", originals, tokenizer, class_prompts=None)


def test_a_hub_id_that_cannot_be_fetched_says_how_to_use_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"pretrained 'CompVis/stable-diffusion-v1-4': no such local directory, "
                                                 r"and as a Hugging Face Hub id it could not be fetched .*Hub ids need "
                                                 r"the network.*set pretrained to that local directory"):
        TextToImageDiffusion(method="salun", pretrained="CompVis/stable-diffusion-v1-4")
    with pytest.raises(FileNotFoundError, match=r"pretrained 'no/such/dir' is not a directory"):
        TextToImageDiffusion(method="salun", pretrained="no/such/dir")


@pytest.mark.parametrize("part", ["vae", "text_encoder", "unet", "scheduler", "tokenizer"])
def test_a_components_directory_missing_a_part_is_named(part, originals, tmp_path):
    shutil.copytree(originals["text"], tmp_path / "sd", ignore=shutil.ignore_patterns(part))
    with pytest.raises(FileNotFoundError, match=f"the {part} is missing"):
        TextToImageDiffusion(method="salun", pretrained=str(tmp_path / "sd"))


@pytest.mark.parametrize("kind", ["pixel", "text"])
def test_images_of_the_wrong_size_or_channels_are_refused(kind, originals, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="1x16x16 .* set the data's image_size: 8 and channels: 1"):
        build(kind, "salun", originals, tokenizer, image_shape=data(image_size=16).image_shape)
    with pytest.raises(ValueError, match="3x8x8 .* channels: 1"):
        build(kind, "salun", originals, tokenizer, image_shape=data(channels=3).image_shape)


# ---------------------------------------------------------------------------------------------------- configs
def run(*args: str) -> None:
    salun([*args, "--trainer.enable_progress_bar=false"])


def test_ddpm_digits_configs_train_unlearn_and_sample(tmp_path):
    small = ["--trainer.fast_dev_run=true", "--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=72"]
    original = tmp_path / "train"
    run("fit", "--config", str(CONFIGS / "ddpm_digits_train.yaml"), f"--trainer.default_root_dir={original}", *small)
    for method in ("retrain", "ga", "rl", "salun"):
        extra = [] if method == "retrain" else [f"--model.init_args.pretrained={original}"]
        root = tmp_path / method
        run("fit", "--config", str(CONFIGS / f"ddpm_digits_{method}.yaml"), f"--trainer.default_root_dir={root}",
            *small, *extra)
        assert json.loads((root / "run.json").read_text())["method"] == method
    unlearning = ["--config", str(CONFIGS / "ddpm_digits_salun.yaml"),
                  f"--trainer.default_root_dir={tmp_path / 'salun'}", f"--model.init_args.pretrained={original}"]
    unlearned = (tmp_path / "salun" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    run("mask", *unlearning, "--model.init_args.saliency_ratio=0.3", "--out", str(tmp_path / "mask.safetensors"))
    assert load_mask(tmp_path / "mask.safetensors")[1]["ratio"] == "0.3"
    assert (tmp_path / "salun" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == unlearned  # no step
    salun(["sample", *unlearning, "--out", str(tmp_path / "samples"), "--num-per-class", "2", "--steps", "2",
          "--classes", "0", "3"])
    summary = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert summary["class_indices"] == [0, 3] and summary["forget_class"] == 0
    assert (summary["guidance_scale"], summary["guidance_w"]) == (3.0, 2.0)  # the model's default w = 2, g = 3
    assert (tmp_path / "samples" / "grid.png").is_file() and (tmp_path / "samples" / summary["files"][1][1]).is_file()


def test_text_to_image_configs_and_the_stable_diffusion_config_run(tmp_path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parents[1])  # the config names its tokenizer relative to the repository, as users run it
    small = ["--trainer.fast_dev_run=true", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=72"]
    original = tmp_path / "train"
    run("fit", "--config", str(CONFIGS / "t2i_digits_train.yaml"), f"--trainer.default_root_dir={original}", *small)
    run("fit", "--config", str(CONFIGS / "t2i_digits_salun.yaml"), f"--trainer.default_root_dir={tmp_path / 'salun'}",
        f"--model.init_args.pretrained={original}", *small)
    # The Stable Diffusion config, with the tiny model standing in for the checkout and the digits for Imagenette.
    digits = ["--data.init_args.dataset=digits", "--data.init_args.data_path=null", "--data.init_args.image_size=16",
              "--data.init_args.channels=1", "--data.init_args.num_workers=0"]
    run("fit", "--config", str(CONFIGS / "sd_class_forgetting.yaml"), f"--trainer.default_root_dir={tmp_path / 'sd'}",
        f"--model.init_args.pretrained={original}", *digits, *small)
    assert json.loads((tmp_path / "sd" / "run.json").read_text())["method"] == "salun"
    config = yaml.safe_load((CONFIGS / "sd_class_forgetting.yaml").read_text())
    model, data_args = config["model"]["init_args"], config["data"]["init_args"]
    assert (model["alpha"], model["lr"], data_args["batch_size"], config["trainer"]["max_epochs"]) == (0.5, 1e-5, 8, 5)
    salun(["sample", "--config", str(CONFIGS / "t2i_digits_salun.yaml"), f"--model.init_args.pretrained={original}",
          f"--trainer.default_root_dir={tmp_path / 'salun'}", "--out", str(tmp_path / "samples"),
          "--num-per-class", "1", "--steps", "2", "--prompts", "an image of the digit 4"])
    summary = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert summary["names"] == ["an image of the digit 4"] and summary["guidance_scale"] == 7.5  # the text default


def test_sample_help_spells_options_with_hyphens_and_says_which_guidance_it_takes(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        salun(["sample", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size" in text and "--num-per-class" in text and not re.findall(r"--\w+_", text)
    assert "diffusers' guidance_scale g, as in salun generate" in text and "1 is no guidance" in text
    assert "3.0 class-conditional, 7.5 text" in text
    for old, new in (("--num_per_class", "--num-per-class"), ("--batch_size", "--batch-size")):  # no aliases
        with pytest.raises(SystemExit) as stop:
            salun(["sample", "--config", str(CONFIGS / "ddpm_digits_train.yaml"), "--out", str(tmp_path), old, "2"])
        assert stop.value.code == 2 and f"{old} is spelled {new}" in capsys.readouterr().err


def test_sample_guidance_is_the_guidance_scale_and_1_is_no_guidance(tmp_path):
    """--guidance is diffusers' g (the model's w = g - 1): 1 samples unguided, the default is the model's w + 1."""
    from salun_lightning.lightning_cli import SalunCLI

    config = ["--config", str(CONFIGS / "ddpm_digits_train.yaml"), f"--model.init_args.unet={json.dumps(PIXEL_UNET)}",
              "--data.init_args.image_size=8", f"--trainer.default_root_dir={tmp_path}"]
    torch.manual_seed(0)
    model = SalunCLI(args=config, run=False).model  # the model salun sample builds; random, so eps(c) != eps(null)
    model.unet.save_pretrained(tmp_path / "unet")

    def sample(name: str, *args: str) -> tuple[dict, dict[str, bytes]]:
        salun(["sample", *config, "--out", str(tmp_path / name), "--num-per-class", "2", "--steps", "2",
               "--classes", "0", "1", "--device", "cpu", *args])
        pngs = {p.relative_to(tmp_path / name).as_posix(): p.read_bytes() for p in (tmp_path / name).rglob("*.png")}
        return json.loads((tmp_path / name / "samples.json").read_text()), pngs

    unguided, unguided_pngs = sample("unguided", "--guidance", "1")
    assert (unguided["guidance_scale"], unguided["guidance_w"]) == (1.0, 0.0)
    plain = sample_images(model, model.class_condition(torch.tensor([0, 0, 1, 1])), seed=0, steps=2, guidance=0.0)
    write_samples(plain, ["0", "1"], 2, tmp_path / "plain")  # an unguided sampling of the same noise
    assert unguided_pngs == {p.relative_to(tmp_path / "plain").as_posix(): p.read_bytes()
                             for p in (tmp_path / "plain").rglob("*.png")}
    default, default_pngs = sample("default")
    assert (default["guidance_scale"], default["guidance_w"]) == (3.0, 2.0)
    guided, guided_pngs = sample("guided", "--guidance", "3")
    assert guided_pngs == default_pngs != unguided_pngs
    with pytest.raises(ValueError, match=r"--guidance is 0.5, but the guidance scale must be >= 1"):
        sample("below", "--guidance", "0.5")


def test_unlearning_from_saved_components_trains_the_denoiser_in_train_mode(tmp_path):

    fit(pixel_model(), data(), tmp_path / "train")
    model = pixel_model("salun", pretrained=str(tmp_path / "train"))
    assert not model.unet.training  # diffusers' from_pretrained hands back eval mode

    class Modes(Callback):
        seen: list[bool] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(pl_module.unet.training)

    modes = Modes()
    trainer = Trainer(accelerator="cpu", max_steps=2, default_root_dir=tmp_path / "salun", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=[modes])
    trainer.fit(model, data(stream=model.train_stream))
    assert modes.seen == [True, True]
