"""The prepared GPU check runs end to end in its CPU toy mode (``--tiny``), as a session with a GPU would run it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_every_step_and_prints_them(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for step in ("device", "device_data", "selection", "sd_concept", "throughput", "protocol"):
        text = (tmp_path / f"{step}.txt").read_text()
        assert "exit status 0," in text, f"{step}:\n{text[-2000:]}"
        assert f"######## {step}" in result.stdout
    assert "the host path's batches (indices and augmented images): True" in result.stdout
    assert "ratio module / plain loop:" in result.stdout
    assert re.search(r"\| salun \| (\d+\.\d\d) / 2\.85 / [+-]\d+\.\d\d \|", result.stdout)  # the paper's UA beside ours
    assert "| retrain | digits: random 10% |" in result.stdout
    assert re.search(r"calibration: \d+\.\d\d s per epoch, \d+ s per fit besides; .*: epochs scale ", result.stdout)
    for method in ("salun", "esd_x", "fmn"):  # a warm-up step, then timed steps through the Trainer
        for checkpointing in ("on", "off"):
            assert re.search(rf"^{method} \(checkpointing {checkpointing}\): batch \d+; warm-up step \d+\.\d+ s; "
                             rf"steps \d+\.\d+ s \(median \d+\.\d+ s\); peak CUDA memory none \(CPU\)",
                             result.stdout, re.MULTILINE), (method, checkpointing)
            assert re.search(rf"^\| {method} \| {checkpointing} \| \d+ \| \d+\.\d+ \| - \|$", result.stdout,
                             re.MULTILINE), (method, checkpointing)
    assert re.search(r"mask at fit start: saliency pass \d+\.\d\d s per forget batch \(\d+ batches", result.stdout)
    assert re.search(r"^\| salun \(FSDP2\) \| on \| \d+ \| \d+\.\d+ \| - \|$", result.stdout, re.MULTILINE)
    # the selection step: both thresholds keep the same count (the script asserts it) and are timed
    assert re.search(r"^\| saliency_mask \| \d+\.\d+ \| nan \|$", result.stdout, re.MULTILINE)
    assert re.search(r"^\| double argsort \| \d+\.\d+ \| nan \|$", result.stdout, re.MULTILINE)


def load_paper_protocol():
    spec = importlib.util.spec_from_file_location("paper_protocol", ROOT / "benchmarks" / "paper_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_protocol_budget_scale_fits_the_time_left():
    protocol = load_paper_protocol()
    # random 10%: salun and rl 10 epochs over D_f + D_r, ft and l1_sparse 10 over D_r (0.9), ga 5 over D_f (0.1)
    assert protocol.unlearning_epoch_units("random10") == pytest.approx(10 + 10 + 9 + 9 + 0.5)
    assert protocol.unlearning_epoch_units("random50") == pytest.approx(10 + 10 + 5 + 5 + 2.5)
    units = protocol.unlearning_epoch_units("random10")
    scale = protocol.budget_scale(300, epoch_s=2.0, overhead_s=10, units=units, seeds=1)
    # the scaled protocol's estimate (two phases' fixed time, 182 epochs, the methods at two epochs per epoch_s)
    # takes 90% of the budget, to the rounding
    assert 2 * 10 + scale * 2.0 * (182 + units / 2) == pytest.approx(0.9 * 300, abs=0.5)
    assert protocol.budget_scale(300, epoch_s=2.0, overhead_s=10, units=units, seeds=2) < scale / 2
    assert protocol.budget_scale(10**6, epoch_s=2.0, overhead_s=10, units=units, seeds=1) == 1.0
    assert protocol.budget_scale(15, epoch_s=2.0, overhead_s=10, units=units, seeds=1) == 0.0
