"""Atomic file writes: nothing is ever left half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path`` (its folder is created), then rename it onto ``path``.

    Example::

        >>> run = Path(tempfile.mkdtemp())
        >>> write_atomically(run / "x" / "report.md", lambda stream: stream.write(b"# Report"))
        >>> def fail_halfway(stream):
        ...     stream.write(b"# Half a rep")
        ...     raise OSError("disk full")
        >>> write_atomically(run / "x" / "report.md", fail_halfway)
        Traceback (most recent call last):
            ...
        OSError: disk full
        >>> (run / "x" / "report.md").read_text(), [path.name for path in (run / "x").iterdir()]  # no temporary left
        ('# Report', ['report.md'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())  # on disk before the rename: a power loss leaves no empty file under the name
        os.chmod(temporary, 0o644)  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_atomically(Path(path), lambda stream: stream.write(json.dumps(payload, indent=2).encode()))
