"""build_report on hand-made run directories: exact tables, per-seed gaps, skipped entries, forget-set checks,
written files and errors."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

import salun_lightning.report as report
from salun_lightning.cli import report_main as main
from salun_lightning.report import build_report
from salun_lightning.runs import FORGET_SET_FILENAME, INCOMPLETE_FILENAME, METRICS_FILENAME

RECORD = {"method": "ft", "seed": 0, "UA": 1, "RA": 1, "TA": 1, "MIA": 1, "RTE": 1}
HEADER = (
    "| method | forget set | UA | RA | TA | MIA | Avg. Gap | RTE |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
)
RANDOM10 = "random 10%"
CLASS0 = "class 0"


def forget_set_id(description: str, seed: int, dataset: str = "digits") -> str:
    """A stand-in for the data module's id: one per (dataset, scenario, seed)."""
    return "sha256:" + hashlib.sha256(f"{dataset}/{description}/{seed}".encode()).hexdigest()


def write_run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    ua,
    ra,
    ta,
    mia,
    rte,
    forget_set: str | None = RANDOM10,
    forget_id: str | None = None,
    seed_in_metrics: bool = True,
    **extra,
) -> Path:
    """A finished run: metrics.json and, unless ``forget_set`` is None, the data module's forget_set.json for the
    digits scenario ``forget_set`` drawn with ``seed`` (id ``forget_id``, default one per scenario and seed)."""
    directory = root / name
    directory.mkdir(parents=True)
    record = {"method": method, "UA": ua, "RA": ra, "TA": ta, "MIA": mia, "RTE": rte, **extra}
    if seed_in_metrics:
        record["seed"] = seed
    (directory / METRICS_FILENAME).write_text(json.dumps(record))
    if forget_set is not None:
        forget_record = {
            "id": forget_id or forget_set_id(forget_set, seed),
            "description": forget_set,
            "dataset": "digits",
            "seed": seed,
            "count": 126,
        }
        (directory / FORGET_SET_FILENAME).write_text(json.dumps(forget_record))
    return directory


@pytest.fixture
def single_seed_runs(tmp_path):
    """The paper's retrain and salun rows (docs/method.md, 'Reference numbers'), plus an ft run with an Avg. Gap of
    exactly 4."""
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
        "| retrain | digits: random 10% | 5.24 | 100.00 | 94.26 | 12.88 | 0.00 | 43.29 |\n"
        "| salun | digits: random 10% | 2.85 | 99.62 | 93.93 | 14.39 | 1.15 | 2.66 |\n"
        "| ft | digits: random 10% | 1.24 | 98.00 | 92.26 | 4.88 | 4.00 | 2.00 |\n"
    )


def test_two_seeds_mean_std_and_per_seed_gap(two_seed_runs):
    # salun's gap is taken per seed (1.0 and 1.5, mean 1.25 ± 0.35), not between the means (which would be 0.75).
    assert build_report(two_seed_runs) == HEADER + (
        "| retrain | digits: random 10% "
        "| 5.00 ± 1.41 | 100.00 ± 0.00 | 95.00 ± 1.41 | 13.00 ± 1.41 | 0.00 ± 0.00 | 42.00 ± 2.83 |\n"
        "| salun | digits: random 10% "
        "| 5.00 ± 1.41 | 99.00 ± 0.00 | 94.00 ± 1.41 | 14.00 ± 2.83 | 1.25 ± 0.35 | 2.50 ± 0.71 |\n"
        "| ga | digits: random 10% | 10.00 | 90.00 | 88.00 | 20.00 | 7.50 | 1.00 |\n"
    )


def test_custom_retrain_name(tmp_path):
    runs = [
        write_run(tmp_path, "a", "oracle", 3, 5, 100, 94, 12, 40),
        write_run(tmp_path, "b", "rl", 3, 7, 98, 92, 10, 2),
    ]
    assert build_report(runs, retrain="oracle") == HEADER + (
        "| oracle | digits: random 10% | 5.00 | 100.00 | 94.00 | 12.00 | 0.00 | 40.00 |\n"
        "| rl | digits: random 10% | 7.00 | 98.00 | 92.00 | 10.00 | 2.00 | 2.00 |\n"
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
    assert table == HEADER + "| retrain | digits: random 10% | 5.00 | 100.00 | 94.00 | 12.00 | 0.00 | 40.00 |\n"
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


def test_command_line_help_and_name(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert text.startswith("usage: salun report ")
    skipping = (
        "entries that are not finished run directories (files, folders without metrics.json, folders marked "
        "INCOMPLETE) are skipped and listed"
    )
    assert skipping in text
    assert "--allow-mixed-forget-sets" in text


# ------------------------------------------------------------------------------------------------ skipped entries


NO_METRICS = "no metrics.json (not a run directory, or its model was not tested)"


def test_files_and_folders_without_metrics_are_skipped_and_listed(single_seed_runs, tmp_path, capsys):
    # As `salun report runs/digits/*` gives them: a saved mask and an untested folder beside the runs.
    mask = tmp_path / "mask.safetensors"
    mask.write_bytes(b"\x00" * 16)
    empty = tmp_path / "untested"
    empty.mkdir()
    entries = [mask, *single_seed_runs[:2], empty, single_seed_runs[2]]
    out = tmp_path / "out"
    table = build_report(entries, out_dir=out)
    assert table == build_report(single_seed_runs)
    document = (out / "report.md").read_text()
    assert document.endswith(f"## Skipped\n\n- `{mask}`: not a directory\n- `{empty}`: {NO_METRICS}\n")
    build_report(single_seed_runs, out_dir=tmp_path / "clean")
    assert "Skipped" not in (tmp_path / "clean" / "report.md").read_text()

    main([*map(str, entries)])
    captured = capsys.readouterr()
    assert captured.out == table
    assert captured.err == f"skipped {mask}: not a directory\nskipped {empty}: {NO_METRICS}\n"


def test_incomplete_run_with_stale_metrics_is_skipped(single_seed_runs, tmp_path, capsys):
    stale = write_run(tmp_path, "salun_failed", "salun", 1, 0, 0, 0, 0, 9)  # seed 1 has no retrain: would raise
    (stale / INCOMPLETE_FILENAME).write_text("a fit started here and has not finished")
    running = tmp_path / "ga_running"
    running.mkdir()
    (running / INCOMPLETE_FILENAME).write_text("a fit started here and has not finished")
    table = build_report([*single_seed_runs, stale, running], out_dir=tmp_path / "out")
    assert table == build_report(single_seed_runs)
    assert (
        f"- `{stale}`: marked INCOMPLETE: a fit there is running or failed (its metrics.json is stale)\n"
        f"- `{running}`: marked INCOMPLETE: a fit there is running or failed\n"
    ) in (tmp_path / "out" / "report.md").read_text()
    main([*map(str, single_seed_runs), str(stale)])
    assert capsys.readouterr().err == (
        f"skipped {stale}: marked INCOMPLETE: a fit there is running or failed (its metrics.json is stale)\n"
    )


def test_missing_and_repeated_entries_are_skipped(single_seed_runs, tmp_path):
    missing = tmp_path / "no_such_run"
    again = tmp_path / "ft" / ".." / "salun"
    build_report([*single_seed_runs, missing, again], out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "report.md").read_text().endswith(
        f"- `{missing}`: does not exist\n- `{again}`: given twice (also as {single_seed_runs[1]})\n"
    )
    assert build_report([*single_seed_runs, again]) == build_report(single_seed_runs)  # salun counted once


def test_nothing_left_names_every_entry_and_why(tmp_path):
    mask = tmp_path / "mask.safetensors"
    mask.write_bytes(b"")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    failed = write_run(tmp_path, "failed", "retrain", 0, 5, 100, 94, 12, 40)
    (failed / INCOMPLETE_FILENAME).touch()
    message = (
        f"no finished run directory among the run_dirs given ({mask}: not a directory; {empty}: {NO_METRICS}; "
        f"{failed}: marked INCOMPLETE: a fit there is running or failed (its metrics.json is stale))"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        build_report([mask, empty, failed])


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
        "| method | forget set | UA | retained acc. | FID | RTE |\n"
        "| --- | --- | ---: | ---: | ---: | ---: |\n"
        "| train | unknown | 2.00 | 95.00 | 1.00 | 1.50 |\n"
        "| ga | unknown | 100.00 | 40.00 | 30.00 | 1.50 |\n"
        "| salun | unknown | 99.00 | 90.00 | 3.25 | 1.50 |\n"
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


# ------------------------------------------------------------------------------------------------ forget sets


def describe(run: Path, scenario: str, seed: int) -> str:
    """How an error message names a run: directory, scenario, seed and the start of the forget-set id."""
    return f"{run} (digits: {scenario}, seed {seed}, {forget_set_id(scenario, seed)[:19]})"


HINT = (
    "Report only runs of one forget set (one scenario, and for each seed one forget-set id), or pass "
    "--allow-mixed-forget-sets (allow_mixed_forget_sets=True) to compare them on purpose."
)


def test_runs_of_different_scenarios_are_refused_with_both_named(tmp_path):
    retrain = write_run(tmp_path, "retrain-random10", "retrain", 0, 5, 100, 94, 12, 40, forget_set=RANDOM10)
    salun = write_run(tmp_path, "salun-class0", "salun", 0, 100, 99, 90, 100, 3, forget_set=CLASS0)
    message = (
        f"the runs are about different forget sets: 'digits: random 10%': {describe(retrain, RANDOM10, 0)}; "
        f"'digits: class 0': {describe(salun, CLASS0, 0)}. {HINT}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        build_report([retrain, salun])
    with pytest.raises(ValueError, match=re.escape(message)):
        main([str(retrain), str(salun)])


def test_same_scenario_different_seeds_with_different_ids(two_seed_runs):
    ids = {json.loads((run / FORGET_SET_FILENAME).read_text())["id"] for run in two_seed_runs}
    assert ids == {forget_set_id(RANDOM10, 0), forget_set_id(RANDOM10, 1)}  # one forget set per seed
    assert build_report(two_seed_runs).count("| digits: random 10% |") == 3


def test_runs_of_one_seed_with_different_ids_are_refused(tmp_path):
    other = "sha256:" + "0" * 64  # same scenario and seed, but another draw (e.g. the dataset changed)
    retrain = write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, 40)
    salun = write_run(tmp_path, "salun", "salun", 0, 6, 99, 93, 12, 2, forget_id=other)
    message = (
        f"the 'digits: random 10%' runs with seed 0 drew different forget sets: "
        f"{forget_set_id(RANDOM10, 0)[:19]}: {describe(retrain, RANDOM10, 0)}; "
        f"sha256:000000000000: {salun} (digits: random 10%, seed 0, sha256:000000000000). {HINT}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        build_report([retrain, salun])


def test_allowing_mixed_forget_sets_builds_the_report_with_a_warning(tmp_path, capsys):
    runs = [
        write_run(tmp_path, "retrain_s0", "retrain", 0, 4, 100, 94, 12, 40, forget_set=RANDOM10),
        write_run(tmp_path, "retrain_s1", "retrain", 1, 6, 100, 96, 14, 44, forget_set=CLASS0),
        write_run(tmp_path, "salun_s0", "salun", 0, 6, 99, 93, 12, 2, forget_set=RANDOM10),
        write_run(tmp_path, "salun_s1", "salun", 1, 4, 99, 95, 16, 3, forget_set=CLASS0),
    ]
    with pytest.raises(ValueError, match="different forget sets"):
        build_report(runs)
    table = build_report(runs, out_dir=tmp_path / "out", allow_mixed_forget_sets=True)
    assert table == HEADER + (
        "| retrain | digits: random 10%; digits: class 0 "
        "| 5.00 ± 1.41 | 100.00 ± 0.00 | 95.00 ± 1.41 | 13.00 ± 1.41 | 0.00 ± 0.00 | 42.00 ± 2.83 |\n"
        "| salun | digits: random 10%; digits: class 0 "
        "| 5.00 ± 1.41 | 99.00 ± 0.00 | 94.00 ± 1.41 | 14.00 ± 2.83 | 1.25 ± 0.35 | 2.50 ± 0.71 |\n"
    )
    problem = (
        f"the runs are about different forget sets: 'digits: random 10%': {describe(runs[0], RANDOM10, 0)}, "
        f"{describe(runs[2], RANDOM10, 0)}; 'digits: class 0': {describe(runs[1], CLASS0, 1)}, "
        f"{describe(runs[3], CLASS0, 1)}"
    )
    document = (tmp_path / "out" / "report.md").read_text()
    warning = (
        "> **Warning: runs of different forget sets are compared** (allowed by --allow-mixed-forget-sets): "
        f"{problem}.\n"
    )
    assert document.startswith("# Unlearning report\n\n" + warning + "\n")

    main([*map(str, runs), "--allow-mixed-forget-sets"])
    captured = capsys.readouterr()
    assert captured.out == table
    assert captured.err == f"warning: {problem}\n"


def test_runs_without_forget_set_file_show_unknown_and_are_not_checked(tmp_path):
    runs = [
        write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, 40, forget_set=None),  # an older run
        write_run(tmp_path, "salun", "salun", 0, 6, 99, 93, 12, 2, forget_set=CLASS0),
        write_run(tmp_path, "salun_old", "salun", 1, 6, 99, 93, 12, 2, forget_set=None),
        write_run(tmp_path, "retrain_s1", "retrain", 1, 5, 100, 94, 12, 40, forget_set=None),
    ]
    assert build_report(runs) == HEADER + (
        "| retrain | unknown | 5.00 ± 0.00 | 100.00 ± 0.00 | 94.00 ± 0.00 | 12.00 ± 0.00 | 0.00 ± 0.00 "
        "| 40.00 ± 0.00 |\n"
        "| salun | digits: class 0; unknown | 6.00 ± 0.00 | 99.00 ± 0.00 | 93.00 ± 0.00 | 12.00 ± 0.00 "
        "| 0.75 ± 0.00 | 2.00 ± 0.00 |\n"
    )


def test_run_list_names_each_forget_set(single_seed_runs, tmp_path):
    build_report(single_seed_runs, out_dir=tmp_path / "out")
    document = (tmp_path / "out" / "report.md").read_text()
    identity = forget_set_id(RANDOM10, 0)[:19]
    assert f"- salun, seed 0: `{single_seed_runs[1]}` (forget set digits: random 10%, {identity})\n" in document


def test_seed_taken_from_forget_set_file(tmp_path):
    # Without "seed" in metrics.json the forget set's seed pairs each run with its retrain run: salun (seed 2)
    # equals the seed-2 retrain run (gap 0), and is 4 points off the seed-1 one on UA.
    runs = [
        write_run(tmp_path, "retrain_s1", "retrain", 1, 4, 100, 94, 12, 40, seed_in_metrics=False),
        write_run(tmp_path, "retrain_s2", "retrain", 2, 8, 100, 94, 12, 40, seed_in_metrics=False),
        write_run(tmp_path, "salun_s2", "salun", 2, 8, 100, 94, 12, 2, seed_in_metrics=False),
    ]
    table = build_report(runs, out_dir=tmp_path / "out")
    assert "| salun | digits: random 10% | 8.00 | 100.00 | 94.00 | 12.00 | 0.00 | 2.00 |\n" in table
    assert f"- salun, seed 2: `{runs[2]}`" in (tmp_path / "out" / "report.md").read_text()


def test_run_without_any_seed(tmp_path):
    run = write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, 40, forget_set=None, seed_in_metrics=False)
    message = f"run directory {run} has no seed: neither its metrics.json nor a forget_set.json gives one"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_report([run])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"description": ""}, "'description' must be a non-empty string, got ''"),
        ({"dataset": None}, "'dataset' must be a non-empty string, got None"),
        ({"id": 3}, "must hold a JSON object with a string 'id'"),
        ({"seed": "0"}, "'seed' must be an integer, got '0'"),
    ],
)
def test_ill_typed_forget_set_file_names_it(tmp_path, change, match):
    run = write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, 40, seed_in_metrics=False)
    path = run / FORGET_SET_FILENAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(match)):
        build_report([run])


# ------------------------------------------------------------------------------------------------ RTE


def test_rte_null_shows_not_available(tmp_path):
    runs = [
        write_run(tmp_path, "retrain_s0", "retrain", 0, 4, 100, 94, 12, 40),
        write_run(tmp_path, "retrain_s1", "retrain", 1, 6, 100, 96, 14, 44),
        write_run(tmp_path, "salun_s0", "salun", 0, 6, 99, 93, 12, None),  # tested without timing information
        write_run(tmp_path, "salun_s1", "salun", 1, 4, 99, 95, 16, 3),
        write_run(tmp_path, "ga_s0", "ga", 0, 10, 90, 88, 20, None),
    ]
    assert build_report(runs, out_dir=tmp_path / "out") == HEADER + (
        "| retrain | digits: random 10% "
        "| 5.00 ± 1.41 | 100.00 ± 0.00 | 95.00 ± 1.41 | 13.00 ± 1.41 | 0.00 ± 0.00 | 42.00 ± 2.83 |\n"
        "| salun | digits: random 10% "
        "| 5.00 ± 1.41 | 99.00 ± 0.00 | 94.00 ± 1.41 | 14.00 ± 2.83 | 1.25 ± 0.35 | n/a |\n"
        "| ga | digits: random 10% | 10.00 | 90.00 | 88.00 | 20.00 | 7.50 | n/a |\n"
    )
    assert_png(tmp_path / "out" / "report.png")


@pytest.mark.parametrize("value", ["2", float("inf"), True])
def test_rte_must_otherwise_be_a_finite_number(tmp_path, value):
    run = write_run(tmp_path, "retrain", "retrain", 0, 5, 100, 94, 12, value)
    with pytest.raises(ValueError, match=re.escape(f"{run / 'metrics.json'}: 'RTE' must be a finite number")):
        build_report([run])


def test_the_plot_has_a_panel_per_metric_each_on_its_own_scale(tmp_path):
    runs = [write_run(tmp_path, "r", "retrain", 0, 5, 100, 94, 12, 40),
            write_run(tmp_path, "f", "ft", 0, 55, 100, 94, 12, 2),  # UA 50 points off
            write_run(tmp_path, "s", "salun", 0, 5, 99.9, 94, 12, 2)]  # RA 0.1 point off
    loaded, _ = report._read_runs(runs)
    figure = report._gap_figure(report._summarise(loaded, "retrain"), "retrain")
    panels = {axes.get_title(): axes for axes in figure.axes}
    assert sorted(panels) == sorted(["|UA - retrain|", "|RA - retrain|", "|TA - retrain|", "|MIA - retrain|",
                                     "Avg. Gap"])
    assert sorted(label.get_text() for label in panels["|UA - retrain|"].get_yticklabels()) == ["ft", "salun"]
    assert panels["|UA - retrain|"].get_xlim()[1] > 50
    assert 0.1 < panels["|RA - retrain|"].get_xlim()[1] < 0.2  # a 0.1-point gap fills most of its panel


# ---------------------------------------------------------------------------------------------------- attacks
def write_attacks(root: Path) -> tuple[Path, Path]:
    """An audit folder (ulira.json for salun and retrain, roc.png) and a relearning folder for salun."""
    audit, relearned = root / "audit", root / "relearn_salun"
    audit.mkdir()
    relearned.mkdir()
    (audit / "ulira.json").write_text(json.dumps({
        "settings": {"runs": 16, "audit_size": 200, "seed": 0},
        "models": {"salun": {"balanced_accuracy": 0.5237, "auc": 0.5483}, "retrain": {"balanced_accuracy": 0.4957,
                                                                                      "auc": 0.4963}}}))
    (audit / "roc.png").write_bytes(b"roc image")
    (relearned / "relearn.json").write_text(json.dumps({
        "settings": {"lr": 1e-4, "steps": 200, "batch_size": 128, "seed": 1}, "method": "salun",
        "k": {"0": {"area_vs_retrain": 1.0, "steps_to_recover": None},
              "10": {"area_vs_retrain": 37.74, "steps_to_recover": 64}}}))
    (relearned / "relearn.png").write_bytes(b"relearn image")
    return audit, relearned


def test_attack_folders_become_columns_and_their_figures_sit_beside_the_report(tmp_path):
    write_run(tmp_path, "retrain", "retrain", 0, 5.0, 100.0, 94.0, 12.0, 40.0)
    write_run(tmp_path, "salun", "salun", 0, 4.0, 99.0, 93.0, 14.0, 2.0)
    write_run(tmp_path, "rl", "rl", 0, 3.0, 99.0, 93.0, 14.0, 2.0)
    (tmp_path / "attacks").mkdir()
    audit, relearned = write_attacks(tmp_path / "attacks")
    out = tmp_path / "report"
    table = build_report([tmp_path / "retrain", tmp_path / "salun", tmp_path / "rl"], out, attacks=[audit, relearned])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()[2:]}
    assert table.splitlines()[0].endswith("| RTE | U-LiRA acc. | U-LiRA AUC | relearn area | relearn steps |")
    assert rows["salun"][-4:] == ["52.37", "54.83", "37.74", "64 |"]  # the largest k's relearning
    assert rows["retrain"][-4:] == ["49.57", "49.63", "-", "- |"] and rows["rl"][-4:] == ["-", "-", "-", "- |"]
    document = (out / "report.md").read_text()
    assert "16 shadow runs, an audit set of 200 samples, seed 0" in document
    assert "k = 10 forget samples, Adam lr 0.0001, 200 steps, batch 128, seed 1" in document
    assert (out / "attack_0.png").read_bytes() == b"roc image" and (out / "attack_1.png").read_bytes() == b"relearn image"
    assert "![U-LiRA ROC, 16 runs, audit set 200](attack_0.png)" in document


def test_bad_attack_folders_are_refused_before_anything_is_written(tmp_path):
    write_run(tmp_path, "retrain", "retrain", 0, 5.0, 100.0, 94.0, 12.0, 40.0)
    (tmp_path / "attacks").mkdir()
    audit, relearned = write_attacks(tmp_path / "attacks")
    with pytest.raises(ValueError, match=r"--attacks .*retrain: no ulira.json \(salun audit --out\) or relearn.json"):
        build_report([tmp_path / "retrain"], tmp_path / "out", attacks=[tmp_path / "retrain"])
    with pytest.raises(ValueError, match="two 'relearn area' results for method 'salun'"):
        build_report([tmp_path / "retrain"], tmp_path / "out", attacks=[relearned, relearned])
    assert not (tmp_path / "out").exists()


def test_a_relearning_attack_on_another_forget_set_is_refused_before_anything_is_written(tmp_path):
    write_run(tmp_path, "retrain", "retrain", 0, 5.0, 100.0, 94.0, 12.0, 40.0)
    write_run(tmp_path, "salun", "salun", 0, 4.0, 99.0, 93.0, 14.0, 2.0)
    other = write_run(tmp_path / "elsewhere", "salun", "salun", 1, 4.0, 99.0, 93.0, 14.0, 2.0)  # seed 1's forget set
    (tmp_path / "attacks").mkdir()
    _, relearned = write_attacks(tmp_path / "attacks")
    record = json.loads((relearned / "relearn.json").read_text())
    runs, out = [tmp_path / "retrain", tmp_path / "salun"], tmp_path / "out"
    for settings in ({"forget_set_id": forget_set_id(RANDOM10, 1)}, {"run": str(other)}):  # recorded, or the run's
        (relearned / "relearn.json").write_text(json.dumps({**record, "settings": {**record["settings"], **settings}}))
        with pytest.raises(ValueError, match=re.escape(
                f"--attacks {relearned}: its relearning attack was made on a salun run of forget set "
                f"{forget_set_id(RANDOM10, 1)[:19]}, but the report's salun runs forgot "
                f"{forget_set_id(RANDOM10, 0)[:19]}; attack one of these runs")):
            build_report(runs, out, attacks=[relearned])
        assert not out.exists()
    attacked = {**record["settings"], "forget_set_id": forget_set_id(RANDOM10, 0)}  # the report's own salun run
    (relearned / "relearn.json").write_text(json.dumps({**record, "settings": attacked}))
    assert "| 37.74 | 64 |" in build_report(runs, out, attacks=[relearned])
