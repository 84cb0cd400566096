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
    for step in ("device", "device_data", "throughput", "protocol"):
        text = (tmp_path / f"{step}.txt").read_text()
        assert "exit status 0," in text, f"{step}:\n{text[-2000:]}"
        assert f"######## {step}" in result.stdout
    assert "the host path's batches (indices and augmented images): True" in result.stdout
    assert "ratio module / plain loop:" in result.stdout
    assert re.search(r"\| salun \| (\d+\.\d\d) / 2\.85 / [+-]\d+\.\d\d \|", result.stdout)  # the paper's UA beside ours
    assert "| retrain | digits: random 10% |" in result.stdout
