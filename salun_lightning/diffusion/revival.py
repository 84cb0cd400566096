"""Concept revival (docs/method.md, 'Concept revival'): does a few steps of fine-tuning bring an erased concept back?

From a finished diffusion run (an erasure, or the original model for comparison), ``salun relearn RUN --out DIR``
fits the ``relearn`` method: the plain denoising loss on the run's forget set (the erased concept's images; another
class of the same data with ``--forget-class``, e.g. unrelated images as the control), starting from the run's own
denoiser, for ``--steps`` Adam steps. The result is an ordinary run directory (``unet/``, ``config.yaml``, curves)
whose generations a judge then scores as it scored the erasure (``salun sample DIR``,
``benchmarks/concept_revival.py``). The run is only read.

Example::

    >>> revival_overrides({"method": "esd_x", "concept_prompt": "in inverted style", "concept": None,
    ...                    "pseudo": "next", "mask_path": None})
    ['--model.init_args.concept_prompt=null']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from salun_lightning.runs import CONFIG_FILENAME, is_incomplete

# The erasure's own settings a plain fine-tune must not carry (the model refuses them for another method).
NEUTRAL = {"concept_prompt": None, "concept": None, "pseudo": "next", "mask_path": None, "save_mask_path": None}


def revival_overrides(init_args: dict[str, Any]) -> list[str]:
    """The ``salun fit`` overrides that reset every erasure-only setting of a run's model arguments."""
    return [f"--model.init_args.{name}={'null' if value is None else value}" for name, value in NEUTRAL.items()
            if name in init_args and init_args[name] != value]


def revival_args(run_dir: Path, out: Path, steps: int, lr: Optional[float] = None,
                 forget_class: Optional[str] = None, extra: Sequence[str] = ()) -> list[str]:
    """The ``salun fit`` arguments that fine-tune ``run_dir``'s denoiser into ``out`` (``lr``: the run's own).

    Raises:
        ValueError: no finished diffusion run in ``run_dir``, ``out`` is the run itself, or bad steps or rate.
    """
    config_path = run_dir / CONFIG_FILENAME
    if not (run_dir / "unet" / "config.json").is_file() or not config_path.is_file() or is_incomplete(run_dir):
        raise ValueError(f"{run_dir}: no finished diffusion run there (it needs unet/, {CONFIG_FILENAME} and no "
                         "INCOMPLETE marker).")
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out {out} is the run itself: give the revived model a directory of its own.")
    if steps < 1 or (lr is not None and lr <= 0):
        raise ValueError(f"--steps must be at least 1 and --lr positive (got {steps} and {lr}).")
    model = (yaml.safe_load(config_path.read_text()).get("model") or {})
    if "diffusion" not in str(model.get("class_path", "")):
        raise ValueError(f"{run_dir}: concept revival fine-tunes diffusion runs; this run's model is "
                         f"{model.get('class_path')} (salun relearn --reference RETRAIN attacks a classifier run).")
    arguments = ["--config", str(config_path), "--model.init_args.method=relearn",
                 f"--model.init_args.unet={run_dir / 'unet'}", *revival_overrides(model.get("init_args") or {}),
                 f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1", f"--trainer.default_root_dir={out}"]
    if lr is not None:
        arguments.append(f"--model.init_args.lr={lr}")
    if forget_class is not None:
        arguments.append(f"--data.init_args.forget_class={forget_class}")
    return [*arguments, *extra]


def revive(run_dir: Path, out: Path, steps: int, lr: Optional[float] = None, forget_class: Optional[str] = None,
           extra: Sequence[str] = ()) -> Path:
    """Fine-tune ``run_dir``'s denoiser ``steps`` steps on its forget set (or ``forget_class``) into ``out``;
    returns ``out``."""
    from salun_lightning.cli import run as salun

    salun(["fit", *revival_args(run_dir, out, steps, lr, forget_class, extra)])
    return out
