"""The one way this package draws a figure: matplotlib's Agg canvas (no pyplot state, no display needed) and an
atomic PNG write, so that a failed plot never leaves half a file.

Example::

    >>> import tempfile
    >>> figure = new_figure(3, 2)
    >>> figure.add_subplot().plot([0, 1], [1, 0])  # doctest: +ELLIPSIS
    [...]
    >>> save_png(figure, Path(tempfile.mkdtemp()) / "line.png").read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Union

from salun_lightning.files import write_atomically


def new_figure(width: float, height: float, layout: str = "constrained") -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches on an Agg canvas (matplotlib is imported here, only
    when a figure is drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Any, target: Union[Path, IO[bytes]], dpi: int = 110) -> Union[Path, IO[bytes]]:
    """Write ``figure`` as PNG to a path (atomically) or into an open binary stream; returns ``target``."""
    if isinstance(target, Path):
        write_atomically(target, lambda stream: figure.savefig(stream, format="png", dpi=dpi))
    else:
        figure.savefig(target, format="png", dpi=dpi)
    return target
