"""``retrain``: exact unlearning, training from fresh weights on D_r only (the reference every method is judged by)."""

from __future__ import annotations

from salun_lightning.methods.train import Train


class Retrain(Train):
    """Cross-entropy on the retain set, from fresh weights."""

    name = "retrain"
    stream = "retain"
