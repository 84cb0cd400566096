"""build_report on hand-made run directories: exact tables, per-seed gaps, written files and errors."""

import json
import os
import re
from pathlib import Path

import pytest

import salun_lightning.report as report
from salun_lightning.report import build_report, main

RECORD = {"method": "ft", "seed": 0, "UA": 1, "RA": 1, "TA": 1, "MIA": 1, "RTE": 1}
HEADER = "| method | UA | RA | TA | MIA | Avg. Gap | RTE |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"


def write_run(root: Path, name: str, method: str, seed: int, ua, ra, ta, mia, rte, **extra) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    record = {"method": method, "seed": seed, "UA": ua, "RA": ra, "TA": ta, "MIA": mia, "RTE": rte, **extra}
    (directory / "metrics.json").write_text(json.dumps(record))
    return directory


@pytest.fixture
def single_seed_runs(tmp_path):
    """SPEC section 6's retrain and salun rows, plus an ft run with an Avg. Gap of exactly 4."""
    return [
        write_run(tmp_path, "ft", "ft", 0, 1.24, 98.0, 92.26, 4.88, 2.0),
        write_run(tmp_path, "salun", "salun", 0, 2.85, 99.62, 93.93, 14.39, 2.66, epochs=10),
        write_run(tmp_path, "retrain", "retrain", 0, 5.24, 100.0, 94.26, 12.88, 43.29),
    ]


@pytest.fixture
def two_seed_runs(tmp_path):
    """Two seeds of retrain and salun, one seed of ga. Per-seed salun gaps are 1.0 and 1.5."""
    return [
        write_run(tmp_path, "salun_s1", "salun", 1, 4, 99, 95, 16, 3),
        write_run(tmp_path, "retrain_s0", "retrain", 0, 4, 100, 94, 12, 40),
        write_run(tmp_path, "ga_s0", "ga", 0, 10, 90, 88, 20, 1),
        write_run(tmp_path, "salun_s0", "salun", 0, 6, 99, 93, 12, 2),
        write_run(tmp_path, "retrain_s1", "retrain", 1, 6, 100, 96, 14, 44),
    ]


def test_single_seed_table(single_seed_runs):
    assert build_report(single_seed_runs) == HEADER + (
        "| retrain | 5.24 | 100.00 | 94.26 | 12.88 | 0.00 | 43.29 |\n"
        "| salun | 2.85 | 99.62 | 93.93 | 14.39 | 1.15 | 2.66 |\n"
        "| ft | 1.24 | 98.00 | 92.26 | 4.88 | 4.00 | 2.00 |\n"
    )


def test_two_seeds_mean_std_and_per_seed_gap(two_seed_runs):
    # salun's gap is taken per seed (1.0 and 1.5, mean 1.25 ± 0.35), not between the means (which would be 0.75).
    assert build_report(two_seed_runs) == HEADER + (
        "| retrain | 5.00 ± 1.41 | 100.00 ± 0.00 | 95.00 ± 1.41 | 13.00 ± 1.41 | 0.00 ± 0.00 | 42.00 ± 2.83 |\n"
        "| salun | 5.00 ± 1.41 | 99.00 ± 0.00 | 94.00 ± 1.41 | 14.00 ± 2.83 | 1.25 ± 0.35 | 2.50 ± 0.71 |\n"
        "| ga | 10.00 | 90.00 | 88.00 | 20.00 | 7.50 | 1.00 |\n"
    )


def test_custom_retrain_name(tmp_path):
    runs = [
        write_run(tmp_path, "a", "oracle", 3, 5, 100, 94, 12, 40),
        write_run(tmp_path, "b", "rl", 3, 7, 98, 92, 10, 2),
    ]
    assert build_report(runs, retrain="oracle") == HEADER + (
        "| oracle | 5.00 | 100.00 | 94.00 | 12.00 | 0.00 | 40.00 |\n"
        "| rl | 7.00 | 98.00 | 92.00 | 10.00 | 2.00 | 2.00 |\n"
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


def test_writes_markdown_and_png(two_seed_runs, tmp_path):
    out = tmp_path / "reports" / "cifar10"
    table = build_report([str(run) for run in two_seed_runs], out_dir=out)
    assert sorted(os.listdir(out)) == ["report.md", "report.png"]  # no temporary files left behind
    document = (out / "report.md").read_text()
    assert table in document
    assert "![Absolute gap to retrain per metric](report.png)" in document
    assert f"- salun, seed 1: `{tmp_path / 'salun_s1'}`" in document
    assert_png(out / "report.png")


def test_only_retrain_runs(tmp_path):
    run = write_run(tmp_path, "r", "retrain", 0, 5, 100, 94, 12, 40)
    table = build_report([run], out_dir=tmp_path / "out")
    assert table == HEADER + "| retrain | 5.00 | 100.00 | 94.00 | 12.00 | 0.00 | 40.00 |\n"
    assert_png(tmp_path / "out" / "report.png")


def test_failed_write_leaves_no_partial_file(single_seed_runs, tmp_path, monkeypatch):
    def broken_plot(*args):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "_plot_gaps", broken_plot)
    with pytest.raises(RuntimeError, match="plot failed"):
        build_report(single_seed_runs, out_dir=tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["report.md"]


def test_command_line(single_seed_runs, tmp_path, capsys):
    main([*map(str, single_seed_runs), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().out == build_report(single_seed_runs)
    assert (tmp_path / "out" / "report.png").is_file()


def test_missing_metrics_file(tmp_path):
    run = write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, 40)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"run directory {empty} has no metrics.json")):
        build_report([run, empty])


def test_missing_key(tmp_path):
    run = write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, 40)
    record = {key: value for key, value in RECORD.items() if key != "TA"}
    (run / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=re.escape(f"{run / 'metrics.json'} is missing key 'TA'")):
        build_report([run])


def test_invalid_json(tmp_path):
    run = write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, 40)
    (run / "metrics.json").write_text('{"method": "retrain",')
    with pytest.raises(ValueError, match=re.escape(f"{run / 'metrics.json'} is not valid JSON")):
        build_report([run])


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ([1, 2], "must hold a JSON object, got list"),
        ({**RECORD, "method": ""}, "'method' must be a non-empty string"),
        ({**RECORD, "seed": "0"}, "'seed' must be an integer, got '0'"),
        ({**RECORD, "seed": True}, "'seed' must be an integer, got True"),
        ({**RECORD, "UA": "1"}, "'UA' must be a finite number, got '1'"),
        ({**RECORD, "MIA": float("nan")}, "'MIA' must be a finite number, got nan"),
    ],
)
def test_ill_typed_record(tmp_path, record, match):
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=match):
        build_report([directory])


def test_no_retrain_run_names_directories(tmp_path):
    runs = [write_run(tmp_path, "a", "ft", 0, 5, 100, 94, 12, 4), write_run(tmp_path, "b", "ga", 0, 5, 100, 94, 12, 4)]
    message = f"no 'retrain' run to compare against among the run directories read: {runs[0]}, {runs[1]}"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_report(runs)


def test_no_retrain_run_with_the_same_seed(tmp_path):
    runs = [
        write_run(tmp_path, "r", "retrain", 0, 5, 100, 94, 12, 40),
        write_run(tmp_path, "s", "salun", 2, 5, 99, 94, 12, 4),
    ]
    message = f"no 'retrain' run with seed 2 for the 'salun' run in {runs[1]} ('retrain' seeds: [0])"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_report(runs)


def test_duplicate_method_and_seed(tmp_path):
    runs = [write_run(tmp_path, name, "retrain", 0, 5, 100, 94, 12, 40) for name in ("r", "r2")]
    with pytest.raises(ValueError, match=re.escape(f"two 'retrain' runs with seed 0: {runs[0]} and {runs[1]}")):
        build_report(runs)


def test_run_dirs_arguments(tmp_path):
    with pytest.raises(ValueError, match="run_dirs is empty"):
        build_report([])
    with pytest.raises(TypeError, match="sequence of directories, got the single path"):
        build_report(str(tmp_path))


def write_diffusion_run(directory: Path, method: str, ua: float, accuracy: float, fid: float, features: str = "judge-penultimate-64") -> Path:
    directory.mkdir(parents=True)
    record = {"method": method, "seed": 0, "UA": ua, "retained_accuracy": accuracy, "FID": fid,
              "fid_features": features, "RTE": 1.5}
    (directory / "metrics.json").write_text(json.dumps(record))
    return directory


def test_diffusion_runs_get_their_own_table_without_retrain(tmp_path):
    runs = [
        write_diffusion_run(tmp_path / "salun", "salun", 99.0, 90.0, 3.25),
        write_diffusion_run(tmp_path / "train", "train", 2.0, 95.0, 1.0),
        write_diffusion_run(tmp_path / "ga", "ga", 100.0, 40.0, 30.0),
    ]
    table = build_report(runs, tmp_path / "out")
    assert table == (
        "| method | UA | retained acc. | FID | RTE |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        "| train | 2.00 | 95.00 | 1.00 | 1.50 |\n"
        "| ga | 100.00 | 40.00 | 30.00 | 1.50 |\n"
        "| salun | 99.00 | 90.00 | 3.25 | 1.50 |\n"
    )
    document = (tmp_path / "out" / "report.md").read_text()
    assert "with judge-penultimate-64 features" in document
    assert (tmp_path / "out" / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_diffusion_and_classifier_runs_do_not_mix(tmp_path):
    diffusion = write_diffusion_run(tmp_path / "salun", "salun", 99.0, 90.0, 3.0)
    classifier = tmp_path / "retrain"
    classifier.mkdir()
    (classifier / "metrics.json").write_text(json.dumps(
        {"method": "retrain", "seed": 0, "UA": 5.0, "RA": 100.0, "TA": 94.0, "MIA": 12.0, "RTE": 40.0}))
    with pytest.raises(ValueError, match="cannot mix classifier and diffusion runs"):
        build_report([diffusion, classifier])


def test_fids_from_different_features_are_refused(tmp_path):
    runs = [
        write_diffusion_run(tmp_path / "a", "salun", 99.0, 90.0, 3.0, "inception-v3-2048"),
        write_diffusion_run(tmp_path / "b", "ga", 99.0, 90.0, 3.0, "judge-penultimate-64"),
    ]
    with pytest.raises(ValueError, match="FIDs from different feature extractors cannot be compared"):
        build_report(runs)


def test_diffusion_run_missing_fid_features(tmp_path):
    run = tmp_path / "salun"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"method": "salun", "seed": 0, "UA": 1.0, "retained_accuracy": 2.0, "FID": 3.0, "RTE": 1.0}))
    with pytest.raises(ValueError, match="missing key 'fid_features'"):
        build_report([run])
