"""Classifier unlearning methods, one file each, and their registry (docs/design.md, 'How to add a method').

Example::

    >>> method = build_method("neggrad_plus", {"beta": 0.9})
    >>> method.stream, method.hparams.beta
    ('paired', 0.9)
    >>> build_method("salun").default_saliency_ratio
    0.5
"""

from __future__ import annotations

from typing import Any, Optional

from salun_lightning.methods.base import ClassifierMethod
from salun_lightning.methods.be import BoundaryExpanding
from salun_lightning.methods.bs import BoundaryShrink
from salun_lightning.methods.ft import FineTune
from salun_lightning.methods.ga import GradientAscent
from salun_lightning.methods.iu import InfluenceUnlearning
from salun_lightning.methods.l1_sparse import L1Sparse
from salun_lightning.methods.neggrad_plus import NegGradPlus
from salun_lightning.methods.retrain import Retrain
from salun_lightning.methods.rl import RandomLabels
from salun_lightning.methods.salun import SalUn
from salun_lightning.methods.salun_soft import SalUnSoft
from salun_lightning.methods.scrub import Scrub
from salun_lightning.methods.ssd import SelectiveSynapticDampening
from salun_lightning.methods.train import Train

METHODS: dict[str, type[ClassifierMethod]] = {
    method.name: method
    for method in (
        Train, Retrain, FineTune, GradientAscent, RandomLabels, L1Sparse, SalUn,  # the first six, and the original
        InfluenceUnlearning, BoundaryShrink, BoundaryExpanding, SalUnSoft,  # the rest of the paper's comparison
        NegGradPlus, Scrub, SelectiveSynapticDampening,  # the field's
    )
}


def build_method(name: str, method_args: Optional[dict[str, Any]] = None) -> ClassifierMethod:
    """The method ``name`` with its hyper-parameters from ``method_args`` (checked).

    Raises:
        ValueError: an unknown method, or bad hyper-parameters (the message names them).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return METHODS[name].from_mapping(method_args)


__all__ = ["METHODS", "ClassifierMethod", "build_method"]
