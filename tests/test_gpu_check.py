"""The prepared GPU check runs end to end in its CPU toy mode (``--tiny``), as a session with a GPU would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_every_step_and_prints_them(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for step in ("device", "device_data", "throughput", "sd_concept", "protocol"):
        text = (tmp_path / f"{step}.txt").read_text()
        assert "exit status 0," in text, f"{step}:\n{text[-2000:]}"
        assert f"######## {step}" in result.stdout
    assert "the host path's batches (indices and augmented images): True" in result.stdout
    assert "ratio module / plain loop:" in result.stdout
    assert re.search(r"\| salun \| (\d+\.\d\d) / 2\.85 / [+-]\d+\.\d\d \|", result.stdout)  # the paper's UA beside ours
    assert "| retrain | digits: random 10% |" in result.stdout
    for method in ("salun", "esd_x", "fmn"):  # a warm-up step, then two timed steps through the Trainer
        assert re.search(rf"^{method}: batch \d+; warm-up step \d+\.\d+ s; steps \d+\.\d+, \d+\.\d+ s \(median "
                         rf"\d+\.\d+ s\); peak CUDA memory none \(CPU\)", result.stdout, re.MULTILINE), method
        assert re.search(rf"^\| {method} \| \d+ \| \d+\.\d+ \| - \|$", result.stdout, re.MULTILINE), method
    assert "mask (at fit start) and setup" in result.stdout
