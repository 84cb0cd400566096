"""``salun relearn``: the same batch order for every model, the curves and recovery against a hand computation, the
files it writes, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from salun_lightning.cli import run
from salun_lightning.models import build_classifier
from salun_lightning.relearn import Evaluator, load_run, relearn, relearn_curve

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits"
QUIET = ["--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("relearn")
    run(["fit", "--config", str(DIGITS / "train.yaml"), f"--trainer.default_root_dir={root / 'train'}", *QUIET,
         "--trainer.max_epochs=2"])
    for method in ("retrain", "rl"):
        extra = [] if method == "retrain" else [f"--model.init_args.original_weights={root / 'train' / 'model.safetensors'}"]
        run(["fit", "--config", str(DIGITS / f"{method}.yaml"), "--config", str(DIGITS / "forget" / "class.yaml"),
             f"--trainer.default_root_dir={root / method}", *QUIET, "--trainer.max_steps=3", *extra])
    return root


def test_every_model_is_fine_tuned_on_the_same_batches(runs):
    module, data = load_run(runs / "rl")
    evaluate = Evaluator(data, data.split.forget[:20])
    seen = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        net = build_classifier("small_resnet", 10, 1)
        batches = seen.setdefault(name, [])
        net.register_forward_pre_hook(lambda _, inputs, batches=batches: batches.append(inputs[0].sum().item()))
        curve = relearn_curve(net, data, data.split.retain[:300], evaluate, steps=5, lr=1e-3, batch_size=64, seed=7)
        assert [point["step"] for point in curve] == [0, 1, 2, 4, 5]
    # evaluations (held-out and test sets) and training batches interleave identically: every input matches
    assert seen["a"] == seen["b"] and len(seen["a"]) > 5


def test_relearn_writes_both_curves_and_scores_recovery_against_the_original(runs, tmp_path):
    record = relearn(runs / "rl", runs / "retrain", tmp_path / "out", ks=(0, 5), steps=3, lr=1e-3, batch_size=64)
    written = json.loads((tmp_path / "out" / "relearn.json").read_text())
    assert written == json.loads(json.dumps(record)) and (tmp_path / "out" / "relearn.png").is_file()
    # the forget set attacked, for salun report --attacks to match against the report's runs
    assert record["settings"]["forget_set_id"] == json.loads((runs / "rl" / "forget_set.json").read_text())["id"]
    assert 0 < record["minutes"] < 10  # its cost, kept with it
    for k, held_out in (("0", 143), ("5", 138)):
        entry = record["k"][k]
        assert entry["held_out"] == held_out
        model, retrain = entry["curves"]["model"], entry["curves"]["retrain"]
        assert [p["step"] for p in model] == [p["step"] for p in retrain] == [0, 1, 2, 3]
        gaps = [m["forget_accuracy"] - r["forget_accuracy"] for m, r in zip(model, retrain)]
        assert entry["area_vs_retrain"] == pytest.approx(sum(gaps) / len(gaps))
        reached = [p["step"] for p in model if p["forget_accuracy"] >= entry["original_forget_accuracy"]]
        assert entry["steps_to_recover"] == (reached[0] if reached else None)


def test_relearn_refuses_runs_of_different_forget_sets_and_a_k_without_held_out_samples(runs, tmp_path):
    with pytest.raises(ValueError, match="must be finished runs of the same forget set"):
        relearn(runs / "rl", runs / "train", tmp_path / "a")
    with pytest.raises(ValueError, match="each k must leave held-out forget samples"):
        relearn(runs / "rl", runs / "retrain", tmp_path / "b", ks=(0, 143))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
