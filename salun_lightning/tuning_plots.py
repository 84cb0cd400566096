"""The plots of a tuning study (``salun tune``) and of several studies side by side.

:func:`plot_study` draws one study's objective over its trials and against each tuned value; :func:`plot_spread`
draws the spread of Avg. Gap and UA over every trial of several methods' studies (the paper's Figure 2(b) box plot:
a stable method has a narrow box). Both take the trial rows of ``<study>/summary.json`` and need no browser.

Example::

    >>> import tempfile
    >>> rows = [{"number": i, "state": "COMPLETE", "value": 1.0 / (i + 1), "params": {"lr": 10.0 ** -i},
    ...          "avg_gap": 1.0 / (i + 1), "metrics": {"UA": 3.0 * i}} for i in range(4)]
    >>> out = Path(tempfile.mkdtemp())
    >>> sorted(p.name for p in plot_study(rows, "avg_gap", "minimize", out))
    ['objective_by_trial.png', 'objective_by_value.png']
    >>> plot_spread({"iu": rows, "iu+mask": rows[:2]}, out / "spread.png").name
    'spread.png'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from salun_lightning.figures import new_figure, save_png


def plot_study(rows: Sequence[dict[str, Any]], objective: str, direction: str, out: Path) -> list[Path]:
    """``objective_by_trial.png`` (each finished trial's score and the best so far, in trial order) and
    ``objective_by_value.png`` (the score against each tuned value, log axes where the values span a decade)."""
    done = [row for row in rows if row["state"] == "COMPLETE"]
    if not done:
        return []
    figure = new_figure(6, 3.5)
    axes = figure.add_subplot()
    numbers, values = [row["number"] for row in done], [row["value"] for row in done]
    axes.plot(numbers, values, "o", label="trial")
    pick = min if direction == "minimize" else max
    best = [pick(values[: i + 1]) for i in range(len(values))]
    axes.step(numbers, best, where="post", label="best so far")
    axes.legend()
    axes.set_xlabel("trial")
    axes.set_ylabel(objective)
    axes.grid(alpha=0.3)
    paths = [save_png(figure, out / "objective_by_trial.png")]
    names = sorted({name for row in done for name in row["params"]})
    figure = new_figure(3.2 * max(len(names), 1), 3.2)
    for index, name in enumerate(names, 1):
        axes = figure.add_subplot(1, len(names), index)
        points = [(row["params"][name], row["value"]) for row in done if name in row["params"]]
        xs = [x for x, _ in points]
        axes.plot(xs, [y for _, y in points], "o")
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            axes.set_xscale("log")
        axes.set_xlabel(name)
        axes.set_ylabel(objective if index == 1 else "")
        axes.grid(alpha=0.3)
    paths.append(save_png(figure, out / "objective_by_value.png"))
    return paths


def plot_spread(studies: dict[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """Box plots of Avg. Gap and UA over every finished trial of each study (one box per method; the gap on a
    symmetric-log scale where it spans more than two decades)."""
    figure = new_figure(max(6, 0.8 * len(studies) + 2), 3.8)
    names = list(studies)
    for index, (label, read) in enumerate((("Avg. Gap", lambda row: row.get("avg_gap")),
                                           ("UA", lambda row: (row.get("metrics") or {}).get("UA"))), 1):
        axes = figure.add_subplot(1, 2, index)
        data = [[read(row) for row in studies[name] if row["state"] == "COMPLETE" and read(row) is not None]
                for name in names]
        axes.boxplot(data, tick_labels=names)
        values = [v for column in data for v in column if v > 0]
        if label == "Avg. Gap" and values and max(values) > 100 * min(values):  # gaps of 0.1 and 50: both readable
            axes.set_yscale("symlog", linthresh=max(min(values), 0.01))
        axes.set_title(f"{label} over the trials")
        axes.tick_params(axis="x", rotation=45)
        axes.grid(alpha=0.3, axis="y")
    return save_png(figure, path)
