"""``salun audit``: the shadow runs hold exactly the planned samples out, forget exactly the included ones, resume
without refitting, and retrain through the same pipeline comes out near chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import salun_lightning.cli
from salun_lightning.audit import audit_plan, run_audit

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits"
TINY = ["--trainer.max_steps=2", "--trainer.enable_progress_bar=false", "--test_after_fit=false"]


def counting_fits(monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = salun_lightning.cli.run

    def fit(args):
        calls.append(list(args))
        real(args)

    monkeypatch.setattr(salun_lightning.cli, "run", fit)
    return calls


def test_an_audit_holds_out_forgets_and_resumes_as_planned(tmp_path, monkeypatch):
    out = tmp_path / "audit"
    calls = counting_fits(monkeypatch)
    summary = run_audit(["--config", str(DIGITS / "rl.yaml")], out, runs=8, audit_size=30, all_fits=TINY)
    assert len(calls) == 8 * 3  # original, rl and retrain per run
    audit, included = audit_plan(1442, 30, 8, seed=0)  # 1,442 digits to train on
    assert json.loads((out / "audit_indices.json").read_text()) == audit
    run = out / "run_003"
    chosen = [a for a, keep in zip(audit, included[3]) if keep]
    assert json.loads((run / "included.json").read_text()) == chosen
    assert json.loads((run / "rl" / "forget_indices.json").read_text()) == chosen  # rl forgets the included ones
    for name in ("original", "rl", "retrain"):  # and no fit of the run sees the others
        assert json.loads((run / name / "forget_set.json").read_text())["excluded"] == 30 - len(chosen)
    assert json.loads((run / "retrain" / "forget_indices.json").read_text()) == chosen
    for name in ("rl", "retrain"):
        assert len(json.loads((run / name / "audit_confidence.json").read_text())) == 30
    retrain = summary["models"]["retrain"]
    assert abs(retrain["balanced_accuracy"] - 0.5) < 0.15 and retrain["runs"] == 8
    assert (out / "roc.png").is_file() and set(json.loads((out / "ulira_scores.json").read_text())) == {"rl", "retrain"}

    calls = counting_fits(monkeypatch)
    assert run_audit(["--config", str(DIGITS / "rl.yaml")], out, runs=8, audit_size=30, all_fits=TINY) == summary
    assert calls == []  # every fit and confidence is reused
    both = run_audit(["--config", str(DIGITS / "ga.yaml")], out, runs=8, audit_size=30, all_fits=TINY)
    assert len(calls) == 8 and all(c[1:3] == ["--config", str(DIGITS / "ga.yaml")] for c in calls)  # ga's only
    assert set(both["models"]) == {"ga", "rl", "retrain"} and both["models"]["rl"] == summary["models"]["rl"]
    with pytest.raises(ValueError, match="has another method named 'rl'"):
        run_audit(["--config", str(DIGITS / "rl.yaml"), "--model.init_args.lr=0.1"], out, runs=8, audit_size=30,
                  all_fits=TINY)
    with pytest.raises(ValueError, match="was made with other audit_size"):
        run_audit(["--config", str(DIGITS / "rl.yaml")], out, runs=8, audit_size=31, all_fits=TINY)


@pytest.mark.parametrize(("extra", "message"), [
    (["--runs", "4"], "give at least 8"),
    (["--audit-size", "0"], "--audit-size 0: give between 1 and 1441"),
    (["--train-config", "missing.yaml"], "missing.yaml does not exist: pass --train-config"),
    (["--jobs", "0"], "--jobs 0: give 1 or more"),
])
def test_bad_audit_input_is_refused_before_any_fit(tmp_path, monkeypatch, capsys, extra, message):
    calls = counting_fits(monkeypatch)
    with pytest.raises(SystemExit):
        salun_lightning.cli.main(["audit", "--config", str(DIGITS / "rl.yaml"), "--out", str(tmp_path / "a"), *extra])
    assert message in capsys.readouterr().err
    assert [c for c in calls if c[0] == "fit"] == [] and not (tmp_path / "a").exists()



@pytest.fixture
def one_thread():
    """Fits in this process on one thread, like each worker of ``jobs=2`` here: their arithmetic is the same."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reference_fits_reach_the_original_and_retrain_only_and_jobs_make_the_same_audit(tmp_path, one_thread):
    import yaml

    schedule = ["--trainer.max_steps=3"]
    alone = run_audit(["--config", str(DIGITS / "rl.yaml")], tmp_path / "one", runs=8, audit_size=30, all_fits=TINY,
                      reference_fits=schedule)
    run = tmp_path / "one" / "run_005"
    steps = {name: yaml.safe_load((run / name / "config.yaml").read_text())["trainer"]["max_steps"]
             for name in ("original", "rl", "retrain")}
    assert steps == {"original": 3, "rl": 2, "retrain": 3}
    assert json.loads((tmp_path / "one" / "audit.json").read_text())["reference_fits"] == schedule

    together = run_audit(["--config", str(DIGITS / "rl.yaml")], tmp_path / "two", runs=8, audit_size=30,
                         all_fits=TINY, reference_fits=schedule, jobs=2)
    assert together["models"] == alone["models"]  # the same fits, two at a time in their own processes
    with pytest.raises(ValueError, match="--jobs 0: give 1 or more"):
        run_audit(["--config", str(DIGITS / "rl.yaml")], tmp_path / "three", runs=8, audit_size=30, jobs=0)
