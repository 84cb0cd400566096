"""``make demo``'s pipeline: the original model once, then each scenario side by side in a forked process, every
method with its tuned config where one exists."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import yaml

from salun_lightning import demo

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits"


def one_epoch_configs(root: Path) -> Path:
    """A copy of the digits configs with every fit at one epoch."""
    configs = root / "configs"
    shutil.copytree(DIGITS, configs, ignore=shutil.ignore_patterns("tuned"))
    for path in configs.glob("*.yaml"):
        text = re.sub(r"^trainer\.max_epochs: .*$", "trainer.max_epochs: 1", path.read_text(), flags=re.MULTILINE)
        path.write_text(text)
    return configs


def test_the_demo_runs_both_scenarios_side_by_side_with_the_tuned_configs(tmp_path):
    configs = one_epoch_configs(tmp_path)
    (configs / "tuned" / "class").mkdir(parents=True)
    (configs / "tuned" / "class" / "ga.yaml").write_text(
        "config: ../../ga.yaml\nmodel.init_args.lr: 0.0123\ndata.init_args.forget_set: class\n"
        "data.init_args.forget_fraction: null\ndata.init_args.forget_class: 0\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reports = demo.run(configs, tmp_path / "out", ("random10", "class"), ("ga", "salun"), jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert set(reports) == {"random10", "class"}
    for scenario, description in (("random10", "random 10%"), ("class", "class 0")):
        rows = [line.split(" | ")[0].strip("| ") for line in reports[scenario].splitlines()
                if line.startswith("|") and description in line]
        assert sorted(rows) == ["ga", "retrain", "salun"]
        assert (tmp_path / "out" / scenario / "demo.log").stat().st_size > 0  # the forked scenario's own output
        assert (tmp_path / "out" / scenario / "report.png").is_file()
    lr = {s: yaml.safe_load((tmp_path / "out" / s / "ga" / "config.yaml").read_text())["model"]["init_args"]["lr"]
          for s in ("random10", "class")}
    assert lr == {"class": 0.0123, "random10": 0.002}  # the tuned config where one exists, else the plain one
