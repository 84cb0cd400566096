"""Every shell block of the READMEs (and the ``salun`` command's docstring example) parses, and the digits blocks run
end to end as written (at tiny size).

The runnable blocks hold only ``salun`` commands. Each command is split as bash would split it (continuation lines,
comments, quotes, ``*`` globs) and run in this process through :func:`salun_lightning.cli.run`, in a fresh folder
holding only a link to ``configs/``, with tiny-size options appended (two training steps, two test batches, two
sampling steps): a new ``salun`` process per command would spend most of the test importing Lightning. The CIFAR-10
walkthrough runs as its digits variant (``cifar10`` replaced by ``digits`` throughout).
"""

from __future__ import annotations

import ast
import glob
import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from salun_lightning.cli import run

ROOT = Path(__file__).resolve().parents[1]
# Markdown files, and the module whose docstring example is shell commands.
SOURCES = [ROOT / "README.md", ROOT / "configs" / "diffusion" / "README.md", ROOT / "salun_lightning" / "cli.py"]
TINY = {
    "fit": ["--trainer.max_steps=2", "--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false"],
    "test": ["--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false"],
    "sample": ["--steps", "2", "--num-per-class", "1"],
}
TINY["tune"] = ["--trials", "2", *TINY["fit"]]  # the last --trials counts
TINY["audit"] = ["--runs", "8", "--audit-size", "20", *(f"--all-fits={option}" for option in TINY["fit"])]


def bash_blocks(path: Path) -> list[str]:
    """The ```bash blocks of a markdown file, or the indented example block of a module docstring."""
    if path.suffix == ".py":
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        example = docstring.split("::\n\n", 1)[1]
        return [textwrap.dedent(example)]
    return re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """The block's commands as bash splits them: continuation lines joined, comments dropped, globs left as text."""
    joined = block.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def runnable(block: str) -> bool:
    """Blocks that run on this machine as written: only salun commands, no accelerators, models or data sets."""
    return all(words[0] == "salun" for words in commands(block)) and not re.search(r"/models/|/data/|--trainer\.devices", block)


def test_the_readmes_have_the_blocks_this_test_runs():
    blocks = [block for path in SOURCES for block in bash_blocks(path)]
    assert len(blocks) >= 6
    assert sum(runnable(block) for block in blocks) >= 4


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_shell_block_parses(path):
    for block in bash_blocks(path):
        result = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}:\n{block}\n{result.stderr}"


RUNNABLE = [(path, index, block) for path in SOURCES for index, block in enumerate(bash_blocks(path)) if runnable(block)]


@pytest.mark.parametrize(("path", "index", "block"), RUNNABLE,
                         ids=[f"{p.parent.name}-{p.name}-block{i}" for p, i, _ in RUNNABLE])
def test_digits_blocks_run_as_written(path, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    try:
        for words in commands(block.replace("cifar10", "digits")):
            args = [match for word in words[1:] for match in (sorted(glob.glob(word)) if "*" in word else [word])]
            run([*args, *TINY.get(args[0], [])])
    finally:
        torch.set_num_threads(threads)
    written = {p.name for p in (tmp_path / "runs").rglob("*.json")}
    assert written & {"metrics.json", "samples.json", "run.json"}, written
