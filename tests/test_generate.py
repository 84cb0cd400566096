"""``salun generate``: image sets made by a text-to-image model itself (the layout, the CSV and the record, the data
module reading them, seeds, resuming, prompt lists, and every refusal, before anything is written)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from salun_lightning.cli import main, run
from salun_lightning.diffusion import DiffusionDataModule, TextToImageDiffusion
from salun_lightning.diffusion import generate as generation
from salun_lightning.diffusion.generate import image_seed, weights_fingerprint
from salun_lightning.runs import is_incomplete
from tests import test_diffusion

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "configs" / "diffusion" / "tiny_clip_tokenizer"
PARTS = {  # Stable Diffusion's parts, in small: 4x4x4 latents, 8x8 RGB images
    "unet": {"sample_size": 4, "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "cross_attention_dim": 16,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 4},
    "vae": {"block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]},
    "text_encoder": {"vocab_size": 514, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 512, "eos_token_id": 513,
                     "pad_token_id": 513},
    "scheduler": {"num_train_timesteps": 100},
}
NUDE, CLOTHED = "a photo of a nude person", "a photo of a person wearing clothes"
NUDITY = ["--set", "forget", NUDE, "3", "--set", "retain", CLOTHED, "2"]
FILES = ["test/forget/00000.png", "test/retain/00000.png", "train/forget/00000.png", "train/forget/00001.png",
         "train/forget/00002.png", "train/retain/00000.png", "train/retain/00001.png"]


one_thread = test_diffusion.one_thread  # tiny models run fastest on one thread (autouse, module scope)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny text-to-image pipeline directory, laid out as a Stable Diffusion checkout (random weights)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("t2i") / "train"
    TextToImageDiffusion(method="train", tokenizer=str(TOKENIZER), **PARTS).save_components(directory)
    return directory


def generate(model: Path, out: Path, *args: str) -> None:
    run(["generate", "--pretrained", str(model), "--out", str(out), "--steps", "2", *args])


@pytest.fixture(scope="module")
def nudity(model, tmp_path_factory) -> Path:
    """The paper's two sets, in small, made once (read only: tests that change a generation copy it)."""
    out = tmp_path_factory.mktemp("nudity") / "nudity"
    generate(model, out, *NUDITY)
    return out


def images_of(out: Path) -> dict[str, bytes]:
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.glob("*/*/*.png"))}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_the_sets_are_an_image_folder_with_prompts_seeds_and_a_record(nudity, model):
    assert sorted(images_of(nudity)) == FILES
    assert sorted(path.name for path in nudity.iterdir()) == ["generation.json", "prompts.csv", "test",
                                                              "test_prompts.csv", "train"]
    with Image.open(nudity / "train" / "forget" / "00000.png") as image:
        assert (image.mode, image.size) == ("RGB", (8, 8))
    train = rows(nudity / "prompts.csv")
    assert list(train[0]) == ["file", "prompt", "seed", "guidance"]
    assert [(row["file"], row["prompt"]) for row in train] == [
        ("forget/00000.png", NUDE), ("forget/00001.png", NUDE), ("forget/00002.png", NUDE),
        ("retain/00000.png", CLOTHED), ("retain/00001.png", CLOTHED)]
    assert [int(row["seed"]) for row in train[3:]] == [image_seed(0, "train", "retain", i) for i in range(2)]
    assert {row["guidance"] for row in train} == {"7.5"}
    test = rows(nudity / "test_prompts.csv")
    assert [(row["file"], int(row["seed"])) for row in test] == [
        (f"{name}/00000.png", image_seed(0, "test", name, 0)) for name in ("forget", "retain")]
    assert len({row["seed"] for row in train + test}) == 7  # no two images share their noise
    record = json.loads((nudity / "generation.json").read_text())
    assert record["settings"] == {
        "pretrained": str(model.resolve()), "unet": str((model / "unet").resolve()), "steps": 2, "image_size": 8,
        "precision": "32", "sets": [["forget", NUDE, 3], ["retain", CLOTHED, 2]], "seed": 0, "guidance_scale": 7.5,
        "test_count": 1, "weights": weights_fingerprint(model, model / "unet")}
    assert len(record["settings"]["weights"]) == 16
    assert record["counts"] == {"train": {"forget": 3, "retain": 2}, "test": {"forget": 1, "retain": 1}}
    assert record["runs"][0]["made"] == 7 and record["runs"][0]["versions"]["torch"] == torch.__version__.split("+")[0]
    assert {"diffusers", "transformers", "salun-lightning", "python"} <= set(record["runs"][0]["versions"])
    assert not is_incomplete(nudity)


def test_the_data_module_reads_the_generated_sets(nudity, tmp_path):
    data = DiffusionDataModule("image_folder", data_path=str(nudity), prompts_csv=str(nudity / "prompts.csv"),
                               forget_class="forget", cache_dir=str(tmp_path), batch_size=8, stream="forget_retain")
    data.setup("fit")
    assert data.class_names == ["forget", "retain"] and data.image_shape == (3, 8, 8)
    forget = next(iter(data.forget_dataloader()))
    retain = next(iter(data.retain_dataloader()))
    assert forget["prompt"] == [NUDE] * 3 and retain["prompt"] == [CLOTHED] * 2
    with Image.open(nudity / "train" / "retain" / "00001.png") as image:
        assert torch.equal(retain["image"][1], torch.from_numpy(np.array(image)).permute(2, 0, 1))


@pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode")  # the frozen VAE and text encoder
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated")  # inside Lightning
def test_the_generated_sets_drive_a_salun_fit_and_its_denoiser_generates_again(nudity, model, tmp_path):
    data = DiffusionDataModule("image_folder", data_path=str(nudity), prompts_csv=str(nudity / "prompts.csv"),
                               forget_class="forget", cache_dir=str(tmp_path), batch_size=2, stream="forget_retain")
    unlearner = TextToImageDiffusion(method="salun", pretrained=str(model), pseudo="prompt", anchor_prompt=CLOTHED,
                                     alpha=0.5, class_names=data.class_names, forget_class="forget",
                                     image_shape=data.image_shape)
    Trainer(max_steps=1, default_root_dir=tmp_path / "salun", accelerator="cpu", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(unlearner, data)
    generate(model, tmp_path / "after", "--unet", str(tmp_path / "salun" / "unet"), *NUDITY)
    assert images_of(tmp_path / "after")["train/forget/00000.png"] != images_of(nudity)["train/forget/00000.png"]


def test_a_class_of_several_prompts_is_numbered_on_and_each_image_keeps_its_prompt(model, nudity, tmp_path):
    sketches = ["a sketch of a house", "a sketch of a dog"]
    generate(model, tmp_path / "style", "--set", "forget", sketches[0], "2", "--set", "retain", CLOTHED, "2",
             "--set", "forget", sketches[1], "1")
    assert [(row["file"], row["prompt"]) for row in rows(tmp_path / "style" / "prompts.csv")] == [
        ("forget/00000.png", sketches[0]), ("forget/00001.png", sketches[0]), ("forget/00002.png", sketches[1]),
        ("retain/00000.png", CLOTHED), ("retain/00001.png", CLOTHED)]
    assert [row["file"] for row in rows(tmp_path / "style" / "test_prompts.csv")] == [
        "forget/00000.png", "forget/00001.png", "retain/00000.png"]
    data = DiffusionDataModule("image_folder", data_path=str(tmp_path / "style"), forget_class="forget",
                               prompts_csv=str(tmp_path / "style" / "prompts.csv"), cache_dir=str(tmp_path),
                               batch_size=8)
    data.setup("fit")
    assert next(iter(data.forget_dataloader()))["prompt"] == [sketches[0], sketches[0], sketches[1]]
    # The retain class is the same class of the same prompt: its images are those of the nudity sets.
    assert images_of(tmp_path / "style")["train/retain/00001.png"] == images_of(nudity)["train/retain/00001.png"]


def test_each_image_depends_on_its_seed_only_not_on_the_batch_size(nudity, model, tmp_path):
    generate(model, tmp_path / "one_by_one", *NUDITY, "--batch-size", "1")
    generate(model, tmp_path / "all_at_once", *NUDITY, "--batch-size", "7")
    assert images_of(tmp_path / "one_by_one") == images_of(nudity) == images_of(tmp_path / "all_at_once")
    generate(model, tmp_path / "seed1", *NUDITY, "--seed", "1")
    other = images_of(tmp_path / "seed1")
    assert all(other[file] != images_of(nudity)[file] for file in FILES)
    # Another count or another class leaves a class's images as they were.
    generate(model, tmp_path / "fewer", "--set", "retain", CLOTHED, "1")
    assert images_of(tmp_path / "fewer")["train/retain/00000.png"] == images_of(nudity)["train/retain/00000.png"]


def count_made(monkeypatch) -> list[int]:
    """Counts the images that get sampled (one entry per batch)."""
    from salun_lightning.diffusion import sampling

    made: list[int] = []
    original = sampling.sample_images

    def counting(module, conditions, *args, **kwargs):
        made.append(len(conditions))
        return original(module, conditions, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample_images", counting)
    return made


def test_a_rerun_makes_only_the_missing_images_and_rewrites_the_records(nudity, model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "nudity"
    shutil.copytree(nudity, out)
    before = {file: (out / file).stat().st_mtime_ns for file in FILES}
    (out / "train" / "forget" / "00001.png").unlink()
    (out / "prompts.csv").unlink()
    made = count_made(monkeypatch)
    generate(model, out, *NUDITY)
    assert made == [1]
    assert "made 1 images (6 already there)" in capsys.readouterr().out
    assert images_of(out) == images_of(nudity)  # the same bytes again
    assert all((out / file).stat().st_mtime_ns == before[file] for file in FILES if file != "train/forget/00001.png")
    assert (out / "prompts.csv").read_bytes() == (nudity / "prompts.csv").read_bytes()
    record = json.loads((out / "generation.json").read_text())
    assert [run["made"] for run in record["runs"]] == [7, 1]


def test_an_interrupted_generation_looks_unfinished_and_the_same_command_completes_it(nudity, model, tmp_path,
                                                                                     monkeypatch):
    out = tmp_path / "nudity"
    written = []
    original = generation.to_png

    def interrupted_after_two(image):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(1)
        return original(image)

    monkeypatch.setattr(generation, "to_png", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate(model, out, *NUDITY, "--batch-size", "4")
    assert is_incomplete(out) and len(images_of(out)) == 2
    assert not (out / "prompts.csv").exists() and not (out / "generation.json").exists()
    assert not list(out.glob("**/.*.tmp"))
    with pytest.raises(ValueError, match=r"other settings \(steps: 2 there, 3 here\)"):
        run(["generate", "--pretrained", str(model), "--out", str(out), "--steps", "3", *NUDITY])
    monkeypatch.setattr(generation, "to_png", original)
    made = count_made(monkeypatch)
    generate(model, out, *NUDITY, "--batch-size", "4")
    assert sum(made) == 5 and not is_incomplete(out)
    assert images_of(out) == images_of(nudity)


def test_a_prompt_list_gives_each_row_its_seed_and_guidance(model, tmp_path):
    i2p = tmp_path / "i2p.csv"
    i2p.write_text("prompt,categories,evaluation_seed,evaluation_guidance\n"
                   "a beach at dawn,,2734,7\n\"an oil painting, nude\",sexual,51,12\na city street,,9,7.0\n")
    generate(model, tmp_path / "i2p", "--prompts-csv", str(i2p), "--per-prompt", "2", "--batch-size", "3")
    made = rows(tmp_path / "i2p" / "prompts.csv")
    assert [(r["file"], r["prompt"], r["seed"], r["guidance"], r["row"]) for r in made] == [
        ("prompts/00000.png", "a beach at dawn", "2734", "7.0", "0"),
        ("prompts/00001.png", "a beach at dawn", "2735", "7.0", "0"),
        ("prompts/00002.png", "an oil painting, nude", "51", "12.0", "1"),
        ("prompts/00003.png", "an oil painting, nude", "52", "12.0", "1"),
        ("prompts/00004.png", "a city street", "9", "7.0", "2"),
        ("prompts/00005.png", "a city street", "10", "7.0", "2")]
    assert not (tmp_path / "i2p" / "test").exists()
    settings = json.loads((tmp_path / "i2p" / "generation.json").read_text())["settings"]
    assert settings["seed_column"] == "evaluation_seed" and len(settings["prompts_csv_sha256"]) == 64
    assert "guidance_scale" not in settings and "seed" not in settings  # the rows say them
    # Rows alone make the same images: their own seeds and guidance, whatever the batches held.
    alone = tmp_path / "alone.csv"
    alone.write_text("text,s,g\n\"an oil painting, nude\",51,12\n\"an oil painting, nude\",52,12\n"
                     "a city street,10,7\n")
    generate(model, tmp_path / "alone", "--prompts-csv", str(alone), "--prompt-column", "text", "--seed-column", "s",
             "--guidance-column", "g", "--class-name", "nsfw", "--batch-size", "1")
    for alone_file, file in (("00000", "00002"), ("00001", "00003"), ("00002", "00005")):
        assert (tmp_path / f"alone/train/nsfw/{alone_file}.png").read_bytes() == \
            (tmp_path / f"i2p/train/prompts/{file}.png").read_bytes()
    # Guidance changes the image; without a seed column the seeds derive from --seed.
    generate(model, tmp_path / "flat", "--prompts-csv", str(alone), "--prompt-column", "text", "--seed-column", "",
             "--guidance-column", "", "--guidance", "3", "--class-name", "nsfw")
    flat = rows(tmp_path / "flat" / "prompts.csv")
    assert [(row["seed"], row["guidance"]) for row in flat] == [(str(image_seed(0, "train", "nsfw", i)), "3.0")
                                                                for i in range(3)]


def test_another_denoiser_and_bf16_are_recorded(model, nudity, tmp_path):
    torch.manual_seed(1)
    unlearned = TextToImageDiffusion(method="train", tokenizer=str(TOKENIZER), **PARTS)
    unlearned.unet.save_pretrained(tmp_path / "salun" / "unet")  # an unlearning run saves its denoiser only
    generate(model, tmp_path / "out", *NUDITY, "--unet", str(tmp_path / "salun" / "unet"), "--precision", "bf16")
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert record["settings"]["unet"] == str((tmp_path / "salun" / "unet").resolve())
    assert record["settings"]["precision"] == "bf16"
    assert images_of(tmp_path / "out")["train/forget/00000.png"] != images_of(nudity)["train/forget/00000.png"]


def test_another_image_size_makes_images_of_that_size(model, tmp_path):
    generate(model, tmp_path / "out", "--set", "forget", NUDE, "1", "--image-size", "14")
    with Image.open(tmp_path / "out" / "train" / "forget" / "00000.png") as image:
        assert image.size == (14, 14)
    assert json.loads((tmp_path / "out" / "generation.json").read_text())["settings"]["image_size"] == 14


def refused(capsys, args: list[str], out: Path) -> str:
    """Run ``salun generate`` through ``main``; check it stopped with one line, having written nothing."""
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--out", str(out), "--steps", "2", *args])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("salun: error: ") and lines[1].startswith("(run with --debug")
    assert not out.exists()
    return lines[0].removeprefix("salun: error: ")


def csv_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "prompts_in.csv"
    path.write_text(text)
    return str(path)


BAD = {
    "count 0": (lambda t: ["--set", "forget", NUDE, "0"],
                r"the count of class 'forget' must be a whole number >= 1, got '0'"),
    "count text": (lambda t: ["--set", "forget", NUDE, "many"], r"whole number >= 1, got 'many'"),
    "empty prompt": (lambda t: ["--set", "forget", "  ", "3"], r"the prompt of class 'forget' is empty"),
    "prompt twice": (lambda t: ["--set", "a", NUDE, "1", "--set", "b", CLOTHED, "1", "--set", "a", NUDE, "2"],
                     r"class 'a' has the prompt 'a photo of a nude person' twice; give it once, with the total count"),
    "class path": (lambda t: ["--set", "../up", NUDE, "1"], r"the class name '../up' cannot name a class folder"),
    "nothing": (lambda t: [],
                r"say what to make: --set CLASS PROMPT COUNT \(repeated\) or --prompts-csv FILE, not neither"),
    "both": (lambda t: [*NUDITY, "--prompts-csv", csv_file(t, "prompt\nx\n")], r"or --prompts-csv FILE, not both"),
    "guidance": (lambda t: [*NUDITY, "--guidance", "0.5"], r"guidance is 0.5, but the guidance scale must be >= 1"),
    "steps": (lambda t: [*NUDITY, "--steps", "0"], r"steps must be a whole number >= 1, got 0"),
    "image size": (lambda t: [*NUDITY, "--image-size", "11"], r"image size 11 is not a multiple of 2 .* use e\.g\. 10 "
                                                             r"\(the model's own: 8\)"),
    "device": (lambda t: [*NUDITY, "--device", "gpu0"], r"device 'gpu0' is not a torch device; use auto, cpu, cuda"),
    "csv option": (lambda t: [*NUDITY, "--per-prompt", "2"], r"--per-prompt belongs to --prompts-csv, not --set"),
    "test count": (lambda t: ["--prompts-csv", csv_file(t, "prompt\nx\n"), "--test-count", "1"],
                   r"--test-count belongs to --set"),
    "no column": (lambda t: ["--prompts-csv", csv_file(t, "prompt,seed\na cat,1\n")],
                  r"prompts_in.csv has no column 'evaluation_seed' or 'evaluation_guidance' \(its columns: prompt, "
                  r"seed\); set --seed-column to one of them, or to '' to give every row --seed; set "
                  r"--guidance-column"),
    "empty seed": (lambda t: ["--prompts-csv",
                              csv_file(t, "prompt,evaluation_seed,evaluation_guidance\na,1,7\nb,,7\n")],
                   r"prompts_in.csv, line 3: evaluation_seed is '', not a whole number"),
    "negative seed": (lambda t: ["--prompts-csv", csv_file(t, "prompt,evaluation_seed,evaluation_guidance\na,-1,7\n")],
                      r"line 2: evaluation_seed is -1; seeds must be in \[0, 2\*\*64 - 1\]"),
    "empty row prompt": (lambda t: ["--prompts-csv", csv_file(t, "prompt,evaluation_seed,evaluation_guidance\n,1,7\n")],
                         r"prompts_in.csv, line 2: the prompt \('prompt'\) is empty: an empty prompt is the "
                         r"unconditional prompt"),
    "no csv": (lambda t: ["--prompts-csv", str(t / "missing.csv")], r"prompts CSV .*missing.csv' does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_in_one_line_before_anything_is_written(case, model, tmp_path, capsys):
    arguments, message = BAD[case]
    assert re.search(message, refused(capsys, ["--pretrained", str(model), *arguments(tmp_path)],
                                                     tmp_path / "out"))


def test_a_model_that_is_no_pipeline_is_refused_naming_the_fix(model, tmp_path, capsys):
    message = refused(capsys, ["--pretrained", str(tmp_path / "nothing"), *NUDITY], tmp_path / "out")
    assert message.startswith(f"pretrained '{tmp_path / 'nothing'}' is not a directory")
    shutil.copytree(model, tmp_path / "salun", ignore=shutil.ignore_patterns("vae", "text_encoder"))
    message = refused(capsys, ["--pretrained", str(tmp_path / "salun"), *NUDITY], tmp_path / "out")
    assert "has no vae/, text_encoder/. An unlearning run saves its denoiser only: give --pretrained" in message
    assert message.endswith(f"--unet {tmp_path / 'salun' / 'unet'}.")


def test_a_hub_id_that_cannot_be_fetched_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refused(capsys, ["--pretrained", "CompVis/stable-diffusion-v1-4", *NUDITY], tmp_path / "out")
    assert message.startswith("pretrained 'CompVis/stable-diffusion-v1-4': no such local directory, and as a Hugging "
                              "Face Hub id it could not be fetched")
    assert "set pretrained to that local directory" in message


def test_a_folder_of_other_settings_or_contents_is_refused_unless_overwritten(nudity, model, tmp_path, capsys):
    out = tmp_path / "nudity"
    shutil.copytree(nudity, out)
    before = images_of(out)
    with pytest.raises(SystemExit):
        main(["generate", "--pretrained", str(model), "--out", str(out), "--steps", "2", *NUDITY[:4], "--set", "retain",
              CLOTHED, "4", "--guidance", "5"])
    message = capsys.readouterr().err.splitlines()[0]
    assert message.startswith(f"salun: error: {out} holds a generation with other settings (sets: ")
    assert "guidance_scale: 7.5 there, 5.0 here); rerun with its settings" in message and "--overwrite" in message
    assert images_of(out) == before and (out / "generation.json").is_file()
    generate(model, out, "--set", "retain", CLOTHED, "1", "--guidance", "5", "--overwrite")
    assert sorted(images_of(out)) == ["test/retain/00000.png", "train/retain/00000.png"]
    assert json.loads((out / "generation.json").read_text())["settings"]["guidance_scale"] == 5.0
    # A folder this command did not fill is never touched, --overwrite or not.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match=r"is not empty and holds no generation.json .* give a new or empty folder"):
        generate(model, tmp_path / "mine", *NUDITY, "--overwrite")
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_help_lists_generate_and_says_which_guidance_it_takes(capsys):
    run(["--help"])
    assert "\n  generate " in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        run(["generate", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "diffusers' guidance_scale g" in text and "1 is no guidance, as in salun sample's --guidance" in text
    assert "--batch-size" in text and "--test-count" in text and not re.findall(r"--\w+_", text)


def test_a_refitted_model_in_the_same_directory_is_not_mixed_into_a_resumed_generation(model, tmp_path, capsys):
    pipeline = tmp_path / "train"
    shutil.copytree(model, pipeline)
    out = tmp_path / "sets"
    generate(pipeline, out, "--set", "retain", CLOTHED, "2")
    weights = next((pipeline / "unet").glob("*.safetensors"))
    time.sleep(0.01)
    weights.write_bytes(weights.read_bytes())  # a new fit writes its denoiser into the same run directory
    with pytest.raises(SystemExit):
        main(["generate", "--pretrained", str(pipeline), "--out", str(out), "--steps", "2", "--set", "retain", CLOTHED,
              "2"])
    message = capsys.readouterr().err.splitlines()[0]
    assert "holds a generation with other settings" in message and "weights: " in message


def test_the_one_prompts_csv_reader_names_the_file_and_line_of_what_it_refuses(tmp_path):
    from salun_lightning.diffusion.prompts import read_prompts_csv

    path = tmp_path / "prompts.csv"
    path.write_bytes("\ufefffile,prompt,seed\nforget/00000.png,\"a photo,\nof a nude person\",7\n./retain/00000.png,a "
                     "photo of a person wearing clothes,8\n".encode())  # a byte-order mark, a quoted line break
    table = read_prompts_csv(path, ["file", "prompt"], file_column="file")
    assert table.columns == ("file", "prompt", "seed") and len(table.sha256) == 64
    assert [(row.line, row.file, row.get("seed"), row.get("guidance")) for row in table.rows] == [
        (3, "forget/00000.png", "7", None), (4, "retain/00000.png", "8", None)]
    with pytest.raises(ValueError, match=r"prompts.csv has no column 'caption' or 'label' \(its columns: file, prompt, "
                                         r"seed\); set caption_column"):
        read_prompts_csv(path, {"caption": "set caption_column", "label": ""}, prompt_column="caption")
    refusals = {
        "file,prompt\na.png,a cat\nb.png, \n":
            r"prompts.csv, line 3: the prompt \('prompt'\) of b.png is empty: an empty prompt is the unconditional "
            r"prompt; give the row its prompt or remove it",
        "prompt\n\"\"\n\"\"\n": r"prompts.csv, line 2: the prompt \('prompt'\) is empty \(and 1 more rows: line 3\)",
        "file,prompt\na.png,a cat\n./a.png,a dog\n":
            r"prompts.csv, line 3: 'a.png' is listed twice \(first on line 2\)",
        "file,prompt\n,a cat\n": r"prompts.csv, line 2: the file column \('file'\) is empty",
        "file,prompt\n": r"prompts.csv has no rows below its header",
    }
    for text, message in refusals.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_prompts_csv(path, ["prompt"], file_column="file" if text.startswith("file") else None)
    path.write_bytes(b"prompt\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"prompts.csv is not UTF-8 text"):
        read_prompts_csv(path, ["prompt"])
    with pytest.raises(FileNotFoundError, match=r"prompts_csv '.*missing.csv' does not exist; give one"):
        read_prompts_csv(tmp_path / "missing.csv", ["prompt"], name="prompts_csv", missing_hint="give one")
