"""Test-session rules: tests run in a scratch directory and never write into the repository (the session fails,
naming the files, when one did); doctests run on one thread."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from _pytest.doctest import DoctestItem

REPOSITORY = Path(__file__).resolve().parent
# What installing and running pytest itself leave in a checkout.
TOOL_OUTPUTS = (".venv/", ".pytest_cache/", "__pycache__/", ".egg-info/")


def _untracked_files() -> set[str]:
    """Every file in the repository that git does not track, ignored ones included (tool outputs left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory", "--no-empty-directory"],
        cwd=REPOSITORY, capture_output=True, text=True, check=False,
    ).stdout.splitlines()
    return {path for path in listed if not any(part in f"/{path}" for part in TOOL_OUTPUTS)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._untracked_before = _untracked_files() if (REPOSITORY / ".git").exists() else None
    scratch = tempfile.mkdtemp(prefix="salun-tests-")
    os.chdir(scratch)  # a test that writes into "the current directory" writes here, not into the repository


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_untracked_before", None)
    if before is None:
        return
    written = sorted(_untracked_files() - before)
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "tests wrote into the repository (they must write into temporary directories): " + ", ".join(written)
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _one_thread_for_doctests(request):
    if not isinstance(request.node, DoctestItem):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
