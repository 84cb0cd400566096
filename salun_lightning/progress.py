"""A line per epoch for runs nobody watches live: under ``nohup``, SLURM or a pipe, Lightning's progress bar writes
nothing readable until the end, so :class:`EpochLine` prints what an epoch did when the output is not a terminal.

Example::

    >>> import io, tempfile
    >>> from lightning.pytorch import Trainer
    >>> from lightning.pytorch.demos.boring_classes import BoringModel
    >>> stream = io.StringIO()
    >>> trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=False,
    ...                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    ...                   callbacks=[EpochLine(stream=stream)], default_root_dir=tempfile.mkdtemp())
    >>> trainer.fit(BoringModel())
    >>> print(stream.getvalue(), end="")
    epoch 1/2: step 2, ... s
    epoch 2/2: step 4, ... s
"""

from __future__ import annotations

import sys
import time
from typing import IO, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override


class EpochLine(Callback):
    """Print ``epoch <n>/<max>: step <s>, <metric> <value>, ..., <seconds> s`` after every training epoch (and its
    validation) on rank zero, when ``stream`` is not a terminal (``always=True``: also on a terminal).

    The metrics are the epoch's logged values (``trainer.callback_metrics``: per-step values as last logged,
    per-epoch ones as reduced, validation included), sorted by name.

    Args:
        stream: where the lines go (default: standard error, where Lightning's progress bar writes).
        always: print on a terminal too.
    """

    def __init__(self, stream: Optional[IO[str]] = None, always: bool = False) -> None:
        self.stream = stream
        self.always = always
        self._started: Optional[float] = None

    @property
    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stderr

    def _enabled(self, trainer: Trainer) -> bool:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return False
        return self.always or not (hasattr(self._out, "isatty") and self._out.isatty())

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled(trainer):
            return
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        total = f"/{trainer.max_epochs}" if trainer.max_epochs not in (None, -1) else ""
        values = ", ".join(f"{name} {value:.4g}" for name, value in self._metrics(trainer).items())
        line = f"epoch {trainer.current_epoch + 1}{total}: step {trainer.global_step}, {values}{', ' if values else ''}"
        print(f"{line}{seconds:.1f} s", file=self._out, flush=True)

    @staticmethod
    def _metrics(trainer: Trainer) -> dict[str, float]:
        metrics = {}
        for name, value in sorted(trainer.callback_metrics.items()):
            if isinstance(value, Tensor) and value.numel() == 1:
                metrics[name] = value.item()
        return metrics
