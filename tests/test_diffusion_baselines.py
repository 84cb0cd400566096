"""The concept-erasure baselines of the text-to-image model (ESD-x, ESD-u, Forget-Me-Not), the ga baseline's loss,
the forget set as the epoch of the forget/retain stream, and their bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import Attention
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image

from salun_lightning.cli import run as salun
from salun_lightning.diffusion import DiffusionDataModule
from salun_lightning.diffusion.baselines import CrossAttentionRecorder, concept_token_positions
from tests import test_diffusion
from tests.test_diffusion import bits, build, data, fit

# test_diffusion.py's fixtures: one torch thread, the tiny tokenizer, and untrained 'original' models of each kind
one_thread, tokenizer, originals = test_diffusion.one_thread, test_diffusion.tokenizer, test_diffusion.originals

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "diffusion"
CROSS = ".attn2."


def unet_weights(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.unet.named_parameters()}


def moved(model, start: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, param in model.unet.named_parameters() if not torch.equal(bits(param), bits(start[name]))}


def storages(module: torch.nn.Module) -> set[int]:
    return {tensor.untyped_storage().data_ptr() for tensor in [*module.parameters(), *module.buffers()]}


# ---------------------------------------------------------------------------------------------------- ESD
@pytest.mark.parametrize("method", ["esd_x", "esd_u"])
def test_an_esd_step_moves_only_its_weights_and_never_the_frozen_copy(method, originals, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build("text", method, originals, tokenizer, lr=1e-2, esd_sampling_steps=5)
    assert model.train_stream == "forget" and model.concept_prompt == "an image of 0"
    keys, start = set(model.state_dict()), unet_weights(model)
    trainer = fit(model, data(), tmp_path, steps=2)
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    original = model.original_denoiser
    assert original is not None and not original.training
    assert all(not param.requires_grad for param in original.parameters())
    assert all(torch.equal(bits(param), bits(start[name])) for name, param in original.named_parameters())
    assert not storages(original) & storages(model.unet)
    assert set(model.state_dict()) == keys  # the copy is no part of the module's state (nor of checkpoints)
    changed = moved(model, start)
    trainable = {name for name, param in model.unet.named_parameters() if param.requires_grad}
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.unet.parameters() if p.requires_grad}
    if method == "esd_x":
        assert trainable == {name for name in start if CROSS in name} and changed and changed <= trainable
    else:
        assert trainable == {name for name in start if CROSS not in name} and changed
        assert not any(CROSS in name for name in changed)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["method"] == method and record["concept_prompt"] == "an image of 0"
    assert (tmp_path / "unet" / "config.json").is_file()


def test_esd_samples_with_the_frozen_copy_and_targets_its_negative_guidance(originals, tokenizer):
    model = build("text", "esd_u", originals, tokenizer, esd_sampling_steps=4, esd_sampling_guidance=2.0,
                  esd_eta=1.5, concept_prompt="an image of 3")
    torch.manual_seed(3)
    x_t, timesteps = model.esd_sample(2)
    original = model.original_denoiser
    # by hand: the stop step, then the noise, from the global generator; guided DDIM with the frozen copy
    torch.manual_seed(3)
    scheduler = DDIMScheduler.from_config(model.noise_scheduler.config)
    scheduler.set_timesteps(4)
    stop = int(torch.randint(0, 4, ()))
    x = torch.randn(2, *model.latent_shape)
    concept, null = model.encode_condition(["an image of 3"] * 2), model.encode_condition([""] * 2)
    with torch.no_grad():
        for t in scheduler.timesteps[:stop]:
            conditional = original(x, t, encoder_hidden_states=concept).sample
            unconditional = original(x, t, encoder_hidden_states=null).sample
            x = scheduler.step(3 * conditional - 2 * unconditional, t, x, eta=0.0).prev_sample
        assert torch.allclose(x_t, x, atol=1e-5)
        assert timesteps.tolist() == [int(scheduler.timesteps[stop])] * 2
        target = model.esd_target(x_t, timesteps)
        conditional = original(x_t, timesteps, encoder_hidden_states=concept).sample
        unconditional = original(x_t, timesteps, encoder_hidden_states=null).sample
    assert not target.requires_grad
    assert torch.allclose(target, unconditional - 1.5 * (conditional - unconditional), atol=1e-5)
    # the trained denoiser plays no part in the sample or the target
    with torch.no_grad():
        for param in model.unet.parameters():
            param.add_(0.1)
    torch.manual_seed(3)
    again, _ = model.esd_sample(2)
    assert torch.equal(again, x_t) and torch.equal(model.esd_target(x_t, timesteps), target)
    loss = model.esd_loss(2)
    loss.backward()
    assert all(param.grad is None for param in original.parameters())
    assert all((param.grad is not None) == (CROSS not in name) for name, param in model.unet.named_parameters())


# ---------------------------------------------------------------------------------------------------- Forget-Me-Not
def test_the_recorded_attention_mass_is_the_hand_computed_one():
    torch.manual_seed(0)
    layer = Attention(query_dim=8, cross_attention_dim=16, heads=2, dim_head=4)
    own = layer.processor
    pixels, tokens = torch.randn(3, 6, 8), torch.randn(3, 5, 16)
    expected_out = layer(pixels, encoder_hidden_states=tokens)
    recorder = CrossAttentionRecorder(torch.nn.ModuleDict({"attn2": layer}))
    with recorder.capture([1, 3]):
        out = layer(pixels, encoder_hidden_states=tokens)
    assert layer.processor is own  # restored
    assert torch.allclose(out, expected_out, atol=1e-6)  # attention computed the standard way
    query = layer.to_q(pixels).view(3, 6, 2, 4).transpose(1, 2)  # (batch, heads, queries, head dim)
    key = layer.to_k(tokens).view(3, 5, 2, 4).transpose(1, 2)
    probs = torch.softmax(query @ key.transpose(-1, -2) / 2.0, dim=-1)  # scale 1 / sqrt(4)
    (captured,) = recorder.captured
    assert torch.allclose(captured, probs[..., [1, 3]].reshape(6, 6, 2), atol=1e-6)
    assert torch.allclose(recorder.attention_mass(), probs[..., [1, 3]].sum(-1).mean(), atol=1e-6)
    assert torch.allclose(recorder.attention_norm(), probs[..., [1, 3]].norm(), atol=1e-6)
    with pytest.raises(RuntimeError, match="no attention was captured"):
        CrossAttentionRecorder(torch.nn.ModuleDict({"attn2": layer})).attention_mass()


def test_concept_tokens_are_found_in_the_prompt(tokenizer):
    from transformers import CLIPTokenizer

    clip = CLIPTokenizer.from_pretrained(tokenizer)  # byte-level: <start> a n</w> i m a g e</w> o f</w> 0</w>
    assert concept_token_positions(clip, "an image of 0", "0", 24) == [10]
    assert concept_token_positions(clip, "an image of 0", "image", 24) == [3, 4, 5, 6, 7]
    assert concept_token_positions(clip, "an image of an image", "image", 24) == [3, 4, 5, 6, 7, 12, 13, 14, 15, 16]
    with pytest.raises(ValueError, match="concept 'cat' does not occur in concept_prompt 'an image of 0'"):
        concept_token_positions(clip, "an image of 0", "cat", 24)


@pytest.mark.parametrize("parameters", ["cross_attention", "all"])
def test_an_fmn_step_lowers_attention_with_the_chosen_weights_and_restores_the_processors(parameters, originals,
                                                                                       tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build("text", "fmn", originals, tokenizer, lr=1e-2, fmn_parameters=parameters)
    assert model.concept_positions == [10] and model.train_stream == "forget"
    processors = {name: type(p) for name, p in model.unet.attn_processors.items()}
    start = unet_weights(model)
    datamodule = data()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.forget_dataloader())), 0)
    torch.manual_seed(1)
    loss = model.fmn_loss(batch)
    layers = model._attention.captured
    assert len(layers) == len(model._attention.layers) == 4  # down block, mid block, two in the up block
    assert torch.allclose(loss, torch.stack([probs.sum(-1).mean() for probs in layers]).mean())
    assert 0 < float(loss) < 1
    trainer = fit(model, datamodule, tmp_path, steps=2)
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert {name: type(p) for name, p in model.unet.attn_processors.items()} == processors
    changed = moved(model, start)
    assert any(CROSS in name for name in changed)
    if parameters == "cross_attention":
        assert all(CROSS in name for name in changed)
    else:
        assert any(CROSS not in name for name in changed)
    assert json.loads((tmp_path / "run.json").read_text())["concept_positions"] == [10]


def test_a_failed_fmn_fit_gives_the_layers_their_processors_back(originals, tokenizer, tmp_path):
    from lightning.pytorch import Callback, Trainer

    class Fail(Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("killed mid-fit")

    model = build("text", "fmn", originals, tokenizer)
    processors = {name: type(p) for name, p in model.unet.attn_processors.items()}
    trainer = Trainer(max_steps=3, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[Fail()])
    datamodule = data()
    datamodule.hparams.stream = model.train_stream
    with pytest.raises(RuntimeError, match="killed mid-fit"):
        trainer.fit(model, datamodule)
    assert not model._attention.installed
    assert {name: type(p) for name, p in model.unet.attn_processors.items()} == processors


def test_the_recorder_refuses_layers_that_normalise_queries_and_keys():
    layer = Attention(8, cross_attention_dim=4, heads=2, dim_head=4, qk_norm="layer_norm")
    unet = torch.nn.ModuleDict({"attn2": layer})
    with pytest.raises(ValueError, match="normalise queries or keys .*use a denoiser without qk_norm"):
        CrossAttentionRecorder(unet)


def test_esd_samples_differ_between_ranks_and_repeat_on_one(originals, tokenizer):
    from types import SimpleNamespace

    model = build("text", "esd_x", originals, tokenizer, esd_sampling_steps=4)

    def sample(rank: int, step: int) -> torch.Tensor:
        model._trainer = SimpleNamespace(world_size=2, global_rank=rank, global_step=step)
        torch.manual_seed(0)  # the same global seed on every rank, as seed_everything gives
        return model.esd_sample(2)[0]

    try:
        first = sample(0, 5)
        assert torch.equal(first, sample(0, 5))  # reproducible
        assert not torch.equal(first, sample(1, 5)) and not torch.equal(first, sample(0, 6))
    finally:
        model._trainer = None


# ---------------------------------------------------------------------------------------------------- ga, epochs
def test_ga_ascends_the_forget_denoising_loss_and_keeps_alpha_times_the_retain_loss(originals):
    model = build("pixel", "ga", originals, None, alpha=0.25, condition_dropout=0.0)
    assert model.train_stream == "forget_retain"
    datamodule = data(stream="forget_retain")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader()))[0], 0)
    torch.manual_seed(0)
    loss = model.training_step(batch, 0)
    torch.manual_seed(0)
    forget, retain = model.denoising_loss(batch["forget"]), model.denoising_loss(batch["retain"])
    assert torch.equal(loss, -forget + 0.25 * retain)


def count_epoch(loader: CombinedLoader) -> tuple[int, int, list[torch.Tensor]]:
    """Steps of one epoch, forget images seen, and the retain batches' images."""
    steps, forget, retains = 0, 0, []
    for batch, _, _ in loader:
        steps += 1
        forget += len(batch["forget"]["image"])
        retains.append(batch["retain"]["image"])
    return steps, forget, retains


def test_an_epoch_is_one_pass_over_the_forget_set_with_fresh_retain_batches(originals, tmp_path):
    datamodule = data(stream="forget_retain")  # 143 zeros to forget, 1,299 other digits; batches of 8
    loader = datamodule.train_dataloader()
    assert loader._mode == "min_size"
    steps, forget, first = count_epoch(loader)
    assert (steps, forget) == (math.ceil(143 / 8), 143)
    _, _, second = count_epoch(loader)
    assert not torch.equal(first[0], second[0])  # the retain set is shuffled afresh
    model = build("pixel", "rl", originals, None)
    trainer = fit(model, data(batch_size=72), tmp_path, steps=-1, max_epochs=1)
    assert trainer.global_step == math.ceil(143 / 72)


def test_a_retain_set_shorter_than_the_forget_set_cycles(tmp_path):
    for split, counts in (("train", {"forget": 5, "retain": 2}), ("test", {"forget": 1, "retain": 1})):
        for name, count in counts.items():
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), 40 * i).save(tmp_path / "images" / split / name / f"{i}.png")
    datamodule = DiffusionDataModule("image_folder", data_path=str(tmp_path / "images"), forget_class="forget",
                                     cache_dir=str(tmp_path / "cache"), batch_size=2, stream="forget_retain")
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert loader._mode == "max_size_cycle"
    steps, forget, retains = count_epoch(loader)
    assert (steps, forget, [len(images) for images in retains]) == (3, 5, [2, 2, 2])


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_concept_erasure_input_is_refused_before_work(originals, tokenizer):
    with pytest.raises(ValueError, match="method 'esd_x' erases a concept named by a text prompt: it needs a "
                                         "TextToImageDiffusion model; ClassConditionalDiffusion offers train"):
        build("pixel", "esd_x", originals, tokenizer)
    with pytest.raises(ValueError, match="unknown method 'esd'; choose one of train, .*esd_x, esd_u, fmn"):
        build("text", "esd", originals, tokenizer)
    with pytest.raises(ValueError, match="anchor_prompt 'an image of 0' is the concept prompt 'an image of 0' itself"):
        build("text", "esd_u", originals, tokenizer, anchor_prompt="an image of 0")
    with pytest.raises(ValueError, match="anchor_prompt 'nudity' is the concept prompt 'nudity' itself"):
        build("text", "fmn", originals, tokenizer, concept_prompt="nudity", concept="nudity", anchor_prompt="nudity")
    with pytest.raises(ValueError, match="concept 'cat' does not occur in concept_prompt 'an image of 0'"):
        build("text", "fmn", originals, tokenizer, concept="cat")
    with pytest.raises(ValueError, match="concept .* belongs to method fmn, not 'esd_x'"):
        build("text", "esd_x", originals, tokenizer, concept="0")
    with pytest.raises(ValueError, match="concept_prompt belongs to methods esd_x, esd_u and fmn, not 'salun'"):
        build("text", "salun", originals, tokenizer, concept_prompt="an image of 0")
    with pytest.raises(ValueError, match="esd_sampling_steps 200 exceeds the noise schedule's 100 timesteps"):
        build("text", "esd_x", originals, tokenizer, esd_sampling_steps=200)
    with pytest.raises(ValueError, match="set concept_prompt .* or class_prompts and forget_class"):
        build("text", "esd_x", originals, tokenizer, class_prompts=None)
    with pytest.raises(ValueError, match="fmn_parameters must be 'all' or 'cross_attention'"):
        build("text", "fmn", originals, tokenizer, fmn_parameters="attn2")
    with pytest.raises(ValueError, match=r"saliency_guidance must be >= 0"):
        build("text", "salun", originals, tokenizer, saliency_guidance=-1.0)


# ---------------------------------------------------------------------------------------------------- configs
def write_generated_folder(root: Path) -> Path:
    """A folder as `salun generate` writes it: train/{forget,retain}/*.png (and test/), prompts.csv."""
    rows = [["file", "prompt", "seed", "guidance"]]
    prompts = {"forget": "a photo of a nude person", "retain": "a photo of a person wearing clothes"}
    for split in ("train", "test"):
        for name, prompt in prompts.items():
            (root / split / name).mkdir(parents=True)
            for i in range(3 if split == "train" else 1):
                grey = 60 * i + (100 if name == "forget" else 0)
                Image.new("L", (16, 16), grey).save(root / split / name / f"{i}.png")
                if split == "train":
                    rows.append([f"{name}/{i}.png", prompt, str(i), "7.5"])
    with open(root / "prompts.csv", "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    return root


def test_the_concept_erasure_configs_run_and_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parents[1])  # the config names its tokenizer relative to the repository, as users run it
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.fast_dev_run=true"]
    original = tmp_path / "train"
    salun(["fit", "--config", str(CONFIGS / "t2i_digits_train.yaml"), f"--trainer.default_root_dir={original}",
           "--data.init_args.batch_size=4", *quiet])
    for method in ("esd_x", "esd_u", "fmn"):
        root = tmp_path / method
        salun(["fit", "--config", str(CONFIGS / f"t2i_digits_{method}.yaml"), f"--trainer.default_root_dir={root}",
               f"--model.init_args.pretrained={original}", "--model.init_args.esd_sampling_steps=5", *quiet])
        record = json.loads((root / "run.json").read_text())
        assert (record["method"], record["concept_prompt"]) == (method, "an image of the digit 0")
    salun(["sample", "--config", str(CONFIGS / "t2i_digits_esd_x.yaml"), f"--model.init_args.pretrained={original}",
           f"--trainer.default_root_dir={tmp_path / 'esd_x'}", "--out", str(tmp_path / "samples"),
           "--num-per-class", "1", "--steps", "2", "--prompts", "an image of the digit 0"])
    assert json.loads((tmp_path / "samples" / "samples.json").read_text())["method"] == "esd_x"
    # The Stable Diffusion concept configs, the tiny model standing in for the checkout, a tiny generated folder
    folder = write_generated_folder(tmp_path / "generated")
    tiny = [f"--model.init_args.pretrained={original}", f"--data.init_args.data_path={folder}",
            f"--data.init_args.prompts_csv={folder / 'prompts.csv'}",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}",
            "--data.init_args.image_size=16", "--data.init_args.channels=1", "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=2", *quiet]
    expected = {"sd_nudity_salun": ("salun", 0.5, 1e-5), "sd_nudity_esd_u": ("esd_u", None, 1e-5),
                "sd_nudity_fmn": ("fmn", None, 2e-6), "sd_object_salun": ("salun", 0.5, 1e-5),
                "sd_style_salun": ("salun", 0.5, 1e-5)}
    for name, (method, alpha, lr) in expected.items():
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        model = config["model"]["init_args"]
        assert (model["method"], model.get("alpha"), model["lr"]) == (method, alpha, lr), name
        extra = ["--model.init_args.esd_sampling_steps=5"] if method == "esd_u" else []
        root = tmp_path / name
        salun(["fit", "--config", str(CONFIGS / f"{name}.yaml"), f"--trainer.default_root_dir={root}", *tiny, *extra])
        assert json.loads((root / "run.json").read_text())["method"] == method
    steps = {name: yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["trainer"].get("max_steps")
             for name in ("sd_nudity_esd_u", "sd_nudity_fmn", "t2i_digits_fmn")}
    assert steps == {"sd_nudity_esd_u": 1000, "sd_nudity_fmn": 35, "t2i_digits_fmn": 35}
    assert yaml.safe_load((CONFIGS / "ddpm_digits_ga.yaml").read_text())["trainer.max_steps"] == 1000


def test_generated_prompts_become_the_class_prompts(tmp_path):
    folder = write_generated_folder(tmp_path / "generated")
    datamodule = DiffusionDataModule("image_folder", data_path=str(folder), prompts_csv=str(folder / "prompts.csv"),
                                     cache_dir=str(tmp_path / "cache"), forget_class="forget")
    assert datamodule.class_prompts == ["a photo of a nude person", "a photo of a person wearing clothes"]


# ---------------------------------------------------------------------------------------------------- pseudo "replace"
def test_replace_pseudo_prompts_are_the_forget_prompts_without_the_concept(originals, tokenizer):
    model = build("text", "salun", originals, tokenizer, pseudo="replace", concept="in inverted style")
    batch = {"image": torch.zeros(4, 1, 8, 8), "class": torch.zeros(4, dtype=torch.long),
             "prompt": ["an image of the digit 3 in inverted style", "an image of the digit  7 in\tinverted  style",
                        "in inverted style, an image of the digit 1", "a 2 in inverted style in inverted style"]}
    assert model.pseudo_condition(batch) == ["an image of the digit 3", "an image of the digit 7",
                                             ", an image of the digit 1", "a 2"]
    anchored = build("text", "rl", originals, tokenizer, pseudo="replace", concept="inverted",
                     anchor_prompt="normal")
    assert anchored.pseudo_condition({**batch, "prompt": ["an image of 3 in inverted style"]}) == [
        "an image of 3 in normal style"]
    with pytest.raises(ValueError, match="the forget prompt 'an uninverted image of 3' does not contain the concept "
                                         "'inverted'"):  # whole words only
        anchored.pseudo_condition({**batch, "prompt": ["an image of 3 in inverted style", "an uninverted image of 3"]})


def test_a_replace_step_conditions_the_target_on_the_replaced_prompts(originals, tokenizer, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build("text", "salun", originals, tokenizer, pseudo="replace", concept="in inverted style")
    encoded: list[list[str]] = []
    encode = model.encode_condition
    monkeypatch.setattr(model, "encode_condition", lambda prompts: encoded.append(list(prompts)) or encode(prompts))
    datamodule = data(prompt_template="an image of {class} in inverted style")
    trainer = fit(model, datamodule, tmp_path, steps=1)
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert ["an image of 0"] * 8 in encoded  # the pseudo prompts of the forget batch (the target)
    assert ["an image of 0 in inverted style"] * 8 in encoded  # the forget batch's own prompts (the prediction)
    # forget prompts without the concept: refused at the step they appear, naming the prompt and the concept
    model = build("text", "salun", originals, tokenizer, pseudo="replace", concept="in inverted style")
    with pytest.raises(ValueError, match="the forget prompt 'an image of 0' does not contain the concept 'in inverted "
                                         "style'"):
        fit(model, data(), tmp_path / "plain", steps=1)


def test_bad_replace_input_is_refused(originals, tokenizer):
    with pytest.raises(ValueError, match="pseudo='replace' replaces the words of concept .* set concept"):
        build("text", "salun", originals, tokenizer, pseudo="replace")
    with pytest.raises(ValueError, match="anchor_prompt 'inverted  style' is the concept 'inverted style' itself"):
        build("text", "salun", originals, tokenizer, pseudo="replace", concept="inverted style",
              anchor_prompt="inverted  style")
    with pytest.raises(ValueError, match="concept is empty"):
        build("text", "salun", originals, tokenizer, pseudo="replace", concept="  ")
    with pytest.raises(ValueError, match="concept .* belongs to method fmn, not 'salun', or to pseudo='replace'.* not "
                                         "pseudo='prompt'"):
        build("text", "salun", originals, tokenizer, pseudo="prompt", anchor_prompt="a 1", concept="0")
    with pytest.raises(ValueError, match="a class-conditional model has no prompts"):
        build("pixel", "salun", originals, None, pseudo="replace")


def test_relearn_fine_tunes_on_the_forget_stream_with_each_images_own_condition(originals):
    model = build("pixel", "relearn", originals, None, condition_dropout=0.9)  # dropout must not reach relearn
    assert model.train_stream == "forget"
    datamodule = data(stream="forget")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    assert set(batch["class"].tolist()) == {0}
    torch.manual_seed(0)
    loss = model.training_step(batch, 0)
    torch.manual_seed(0)
    own = model.denoising_loss(batch)
    torch.manual_seed(0)
    dropped = model.denoising_loss(batch, condition_dropout=0.9)
    assert torch.equal(loss, own) and not torch.equal(loss, dropped)
