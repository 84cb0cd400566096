"""benchmarks/concept_erasure.py end to end at toy size (``--tiny``), and its scheduling arithmetic."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "concept_erasure.py"
STYLE_ROWS = ["original", "salun", "esd_x", "esd_u", "fmn"]
OBJECT_ROWS = ["original", "salun", "esd_x", "fmn"]


def load_script():
    spec = importlib.util.spec_from_file_location("concept_erasure_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(stdout: str, title: str) -> list[list[str]]:
    """The rows (cells) of the markdown table printed under the heading that starts with ``title``."""
    section = stdout.split(title, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]  # without the header


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("concept_erasure")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--jobs", "1", "--out", str(out)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result.stdout


def test_tiny_run_prints_a_table_per_experiment_with_every_method(tiny_run):
    out, stdout = tiny_run
    style = table_rows(stdout, "## Style erasure")
    objects = table_rows(stdout, "## Object erasure")
    assert [row[0] for row in style] == STYLE_ROWS
    assert [row[0] for row in objects] == OBJECT_ROWS
    for row in style + objects:
        numbers = [float(cell) for cell in row[2:-1]]  # percentages and FID
        assert all(0 <= value for value in numbers) and all(value <= 100 for value in numbers[:-1]), row
    assert [row[-1] for row in style][0] == "-" and all(float(row[-1]) > 0 for row in style[1:])  # RTE minutes
    assert re.search(r"estimated default run \(2 workers\) at this run's per-step times: \d+\.\d min", stdout)
    assert re.search(r"on an idle 2-core machine .*: about \d+ min", stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["style"]] == STYLE_ROWS
    assert [r["name"] for r in summary["object"]] == OBJECT_ROWS
    assert summary["estimated_default_minutes"]["total"] > 0
    assert 0 <= summary["judge"]["style_accuracy"] <= 100 and summary["judge"]["test_images"] == 2 * 355


def test_tiny_run_writes_data_grids_and_every_run_in_its_own_directory(tiny_run):
    out, _ = tiny_run
    for name in STYLE_ROWS:
        grid = Image.open(out / "grids" / f"style_{name}.png")
        assert grid.size[1] > grid.size[0]  # 20 prompt rows of 2 images
    for name in OBJECT_ROWS:
        assert (out / "grids" / f"object_{name}.png").is_file()
    for run in ["train", *(f"style_{m}" for m in STYLE_ROWS[1:]), *(f"object_{m}" for m in OBJECT_ROWS[1:])]:
        assert (out / run / "unet" / "config.json").is_file() and (out / run / "run.json").is_file(), run
    for run in [*(f"style_{m}" for m in STYLE_ROWS[1:]), *(f"object_{m}" for m in OBJECT_ROWS[1:])]:
        assert json.loads((out / run / "metrics.json").read_text())["fit"]["steps"] > 0
    salun = yaml.safe_load((out / "style_salun" / "config.yaml").read_text())["model"]["init_args"]
    assert (salun["method"], salun["pseudo"], salun["concept"], salun["anchor_prompt"]) == (
        "salun", "replace", "in inverted style", "")
    esd = json.loads((out / "style_esd_x" / "run.json").read_text())
    assert esd["concept_prompt"] == "in inverted style"
    fmn = yaml.safe_load((out / "style_fmn" / "config.yaml").read_text())["model"]["init_args"]
    assert (fmn["concept_prompt"], fmn["concept"]) == ("in inverted style", "inverted style")
    # the image folder: 256 training digits per style (--tiny), the inverted ones 255 - x, and a prompt each
    with open(out / "data" / "prompts.csv", newline="") as stream:
        rows = {row["file"]: row["prompt"] for row in csv.DictReader(stream)}
    assert len(rows) == 512 and len(list((out / "data" / "test" / "inverted").iterdir())) == 355
    normal = next(file for file in rows if file.startswith("normal/00007_"))
    digit = normal.rsplit("_", 1)[1].removesuffix(".png")
    inverted = f"inverted/00263_{digit}.png"
    assert rows[normal] == f"an image of the digit {digit}"
    assert rows[inverted] == f"an image of the digit {digit} in inverted style"
    pixels = [np.asarray(Image.open(out / "data" / "train" / file)).astype(int) for file in (normal, inverted)]
    assert pixels[0].shape == (16, 16) and (pixels[0] + pixels[1] == 255).all() and pixels[0].std() > 0
    # the object sets were made by `salun generate` from the original model
    generation = json.loads((out / "object_data" / "generation.json").read_text())
    assert generation["counts"]["train"] == {"forget": 6, "retain": 9}


def test_the_estimate_lays_tasks_out_on_the_first_free_worker():
    script = load_script()
    assert script.schedule([(10.0, 0.0), (4.0, 0.0), (4.0, 0.0), (4.0, 0.0)], 2) == 12.0
    assert script.schedule([(10.0, 0.0), (4.0, 0.0)], 1) == 14.0
    assert script.schedule([(1.0, 0.0), (3.0, 5.0)], 2) == 8.0  # a task waits for what it needs


# ---------------------------------------------------------------------------------------------------- tuned
def load_tuned_script():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("tuned_concept_erasure_under_test",
                                                  ROOT / "benchmarks" / "tuned_concept_erasure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_tuned_erasure_runs_studies_on_the_base_run_resumes_and_leaves_the_base_alone(tiny_run, tmp_path, capsys,
                                                                                      monkeypatch):
    base, _ = tiny_run
    script = load_tuned_script()
    monkeypatch.setattr(script, "quiet", lambda threads: None)  # the process's logging and threads stay as they are
    before = listing(base)
    argv = ["--base", str(base), "--trials", "2", "--methods", "salun", "fmn", "--experiments", "style",
            "--space", "max_steps=10:12", "--space", "alpha=0.1:1", "--per-prompt", "2", "--sample-steps", "3",
            "--jobs", "1", "--out", str(tmp_path / "tuned"), "--json", str(tmp_path / "tuned.json")]
    summary = script.main(argv)
    assert listing(base) == before  # the base run is only read
    original = summary["experiments"]["style"]["original"]
    for method in ("salun", "fmn"):
        row = summary["experiments"]["style"][method]
        assert len(row["trial_values"]) == 2
        assert summary["space"][method]["max_steps"] == [10, 12, True]
        for number in (0, 1):
            trial = tmp_path / "tuned" / "style" / method / f"trial_{number:04d}"
            metrics = json.loads((trial / "metrics.json").read_text())
            assert (trial / "unet" / "config.json").is_file() and (trial / "grid.png").is_file()
            expected = (100 - metrics["style_erasure"]) + max(
                0.0, original["retained_digit_accuracy"] - metrics["retained_digit_accuracy"])
            assert row["trial_values"][number] == pytest.approx(expected)
            config = yaml.safe_load((trial / "config.yaml").read_text())
            assert 10 <= config["trainer"]["max_steps"] <= 12 and config["model"]["init_args"]["method"] == method
        assert set(row["best"]["params"]) == set(script.TUNED[method])
    assert 0.1 <= summary["experiments"]["style"]["salun"]["best"]["params"]["alpha"] <= 1
    assert json.loads((tmp_path / "tuned.json").read_text())["trials"] == 2
    capsys.readouterr()
    again = script.main(argv)  # resumed: the budget is spent, nothing is fitted again
    assert again["experiments"] == summary["experiments"]
    assert not (tmp_path / "tuned" / "style" / "salun" / "trial_0002").exists()
    assert "2 done" in capsys.readouterr().out


def test_tuned_erasure_refuses_a_bad_range_or_base_before_any_work(tiny_run, tmp_path, capsys):
    base, _ = tiny_run
    script = load_tuned_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--base", str(base), "--space", "lr=1e-8:1e-3", "--out", str(tmp_path / "t")])
    assert "the method searches lr in [1e-06, 0.001]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--base", str(tmp_path), "--out", str(tmp_path / "t")])
    assert "no train/ there; run benchmarks/concept_erasure.py" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------------------------------- revival
def test_salun_relearn_revives_a_diffusion_run_into_its_own_directory_and_leaves_the_run_alone(tiny_run, tmp_path):
    from salun_lightning.cli import run as salun
    from salun_lightning.diffusion import TextToImageDiffusion

    base, _ = tiny_run
    erased = base / "style_esd_x"
    before = listing(erased)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the tiny runs name concept_erasure.StepTimes as a callback
    salun(["relearn", str(erased), "--out", str(tmp_path / "revived"), "--steps", "2", "--lr", "1e-3"])
    salun(["relearn", str(erased), "--out", str(tmp_path / "control"), "--steps", "2", "--forget-class", "normal"])
    assert listing(erased) == before
    revived = yaml.safe_load((tmp_path / "revived" / "config.yaml").read_text())
    control = yaml.safe_load((tmp_path / "control" / "config.yaml").read_text())
    init = revived["model"]["init_args"]
    assert (init["method"], init["unet"], init["concept_prompt"], init["lr"]) == ("relearn", str(erased / "unet"),
                                                                                 None, 1e-3)
    assert revived["trainer"]["max_steps"] == 2 and revived["data"]["init_args"]["forget_class"] == "inverted"
    assert control["data"]["init_args"]["forget_class"] == "normal"
    assert control["model"]["init_args"]["lr"] == yaml.safe_load((erased / "config.yaml").read_text())[
        "model"]["init_args"]["lr"]

    def weights(run: Path) -> dict[str, torch.Tensor]:
        model = TextToImageDiffusion(method="train", pretrained=str(base / "train"))
        model.load_unet(str(run / "unet"))
        return model.unet.state_dict()

    start, after = weights(erased), weights(tmp_path / "revived")
    assert any(not torch.equal(start[name], after[name]) for name in start)  # it trained from the erased denoiser


def test_salun_relearn_refuses_bad_revival_input_before_any_work(tiny_run, tmp_path):
    from salun_lightning.diffusion.revival import revival_args

    base, _ = tiny_run
    erased = base / "style_salun"
    with pytest.raises(ValueError, match="is the run itself"):
        revival_args(erased, erased, 2)
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        revival_args(erased, tmp_path / "r", 0)
    with pytest.raises(ValueError, match="no finished diffusion run there"):
        revival_args(base / "judge", tmp_path / "r", 2)
    assert not (tmp_path / "r").exists()


def test_concept_revival_judges_every_model_before_after_and_on_the_control(tiny_run, tmp_path, monkeypatch):
    base, _ = tiny_run
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("concept_revival_under_test",
                                                  ROOT / "benchmarks" / "concept_revival.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "quiet", lambda threads: None)
    argv = ["--base", str(base), "--methods", "salun", "--steps", "1", "2", "--per-prompt", "2",
            "--sample-steps", "3", "--jobs", "1", "--out", str(tmp_path / "revival"),
            "--merge-into", str(tmp_path / "strong.json")]
    (tmp_path / "strong.json").write_text('{"ulira": {"digits": {}}}')
    summary = script.main(argv)
    # every model, the original included, is fine-tuned on its experiment's concept and, as the control, on the
    # unrelated images of that experiment's data (the original's own config holds the style data only)
    for experiment, folder, concept, control in (("style", "data", "inverted", "normal"),
                                                 ("object", "object_data", "forget", "retain")):
        rows = summary["concept_revival"][experiment]
        assert set(rows) == {"original", "never_learned", "salun"}
        for model, row in rows.items():
            assert set(row["curve"]) == {"1", "2"} and row["after"] == row["curve"]["2"] and row["steps"] == 2
            judged = json.loads((tmp_path / "revival" / experiment / model / "revived_2.json").read_text())
            assert row["after"] == judged[script.ERASED[experiment]] and 0 <= row["control"] <= 100
            for fit, images in (("revived_1", concept), ("control_2", control)):
                config = yaml.safe_load((tmp_path / "revival" / experiment / model / fit / "config.yaml").read_text())
                data = config["data"]["init_args"]
                assert (data["forget_class"], Path(data["data_path"])) == (images, base / folder), (model, fit)
    # the never-learned reference: the original's own fit without the concept
    style = yaml.safe_load((tmp_path / "revival" / "style" / "never_learned_fit" / "config.yaml").read_text())
    assert (style["model"]["init_args"]["method"], style["data"]["init_args"]["forget_class"]) == ("retrain",
                                                                                                  "inverted")
    trained = yaml.safe_load((tmp_path / "revival" / "object" / "never_learned_fit" / "config.yaml").read_text())
    folder = Path(trained["data"]["init_args"]["data_path"])
    assert trained["model"]["init_args"]["method"] == "train" and folder != base / "data"
    images = {str(p.relative_to(folder / "train")) for p in (folder / "train").rglob("*.png")}
    every = {str(p.relative_to(base / "data" / "train")) for p in (base / "data" / "train").rglob("*.png")}
    assert images == {name for name in every if not name.endswith("_0.png")} and len(images) < len(every)
    merged = json.loads((tmp_path / "strong.json").read_text())
    assert merged["ulira"] == {"digits": {}} and merged["concept_revival"]["style"]["salun"]["steps"] == 2
    fitted = listing(tmp_path / "revival")
    assert script.main(argv)["concept_revival"] == summary["concept_revival"]  # resumed: nothing fitted again
    assert listing(tmp_path / "revival") == fitted
