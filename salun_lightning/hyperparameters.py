"""A method's own hyper-parameters: a frozen dataclass with types, defaults, checks and tuning ranges.

Every unlearning method (classifier or diffusion) declares its hyper-parameters as a subclass of
:class:`Hyperparameters`; a LightningModule takes them as a plain mapping (``method_args`` in a config) and builds
them with :meth:`Hyperparameters.from_mapping`, which refuses unknown names, wrong types and bad values before any
work. Fields made with :func:`tunable` carry the range a tuner searches (:meth:`Hyperparameters.search_space`).

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Weighting(Hyperparameters):
    ...     beta: float = tunable(0.95, 0.5, 0.9999, doc="the retain loss's weight")
    ...     def check(self) -> None:
    ...         require(0 < self.beta < 1, f"beta must be in (0, 1), got {self.beta}.")
    >>> Weighting.from_mapping({"beta": 0.9}, "neggrad_plus")
    Weighting(beta=0.9)
    >>> Weighting.from_mapping({"gamma": 1}, "neggrad_plus")
    Traceback (most recent call last):
    ...
    ValueError: method 'neggrad_plus' has no hyper-parameter 'gamma'; its hyper-parameters are: beta.
    >>> Weighting.search_space()
    {'beta': SearchRange(low=0.5, high=0.9999, log=False)}
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, TypeVar

H = TypeVar("H", bound="Hyperparameters")


@dataclass(frozen=True)
class SearchRange:
    """Where a tuner searches a hyper-parameter: ``[low, high]``, on a log scale when ``log`` (integers stay
    integers when the field is an ``int``)."""

    low: float
    high: float
    log: bool = False


SALIENCY_RATIO_RANGE = SearchRange(0.1, 0.9)  # the fraction of weights a tuned mask keeps, any model


def tunable(default: Any, low: float, high: float, *, log: bool = False, doc: str = "") -> Any:
    """A dataclass field with a default and the range a tuner searches."""
    return dataclasses.field(default=default, metadata={"range": SearchRange(low, high, log), "doc": doc})


def fixed(default: Any, *, doc: str = "") -> Any:
    """A dataclass field with a default that tuning leaves alone (a choice of variant, not a strength)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: the form of every hyper-parameter check."""
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class Hyperparameters:
    """Base of a method's hyper-parameters (a method without any uses it as it is)."""

    def check(self) -> None:
        """Raise ``ValueError`` naming the bad value and the valid range (override; called on construction)."""

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def from_mapping(cls: type[H], values: Optional[Mapping[str, Any]], method: str) -> H:
        """Build and check the hyper-parameters from a mapping (a config's ``method_args``; ``None``: defaults).

        Raises:
            ValueError: an unknown name (the message lists the known ones), a value of the wrong type, or one that
                fails :meth:`check`.
        """
        values = dict(values or {})
        names = [field.name for field in dataclasses.fields(cls)]
        for name in values:
            if name not in names:
                known = ", ".join(names) if names else "none"
                raise ValueError(f"method {method!r} has no hyper-parameter {name!r}; its hyper-parameters are: {known}.")
        hints = typing.get_type_hints(cls)
        converted = {name: _converted(method, name, value, hints[name]) for name, value in values.items()}
        return cls(**converted)

    @classmethod
    def search_space(cls) -> dict[str, SearchRange]:
        """The tunable hyper-parameters and their ranges."""
        return {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}

    def as_dict(self) -> dict[str, Any]:
        """The values by name (what a run records)."""
        return dataclasses.asdict(self)


def _converted(method: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type (an int where a float is expected becomes a float), or a clear error."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(f"{method}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, bool, str) and isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise ValueError(f"{method}: {name} must be a {getattr(hint, '__name__', hint)}, got {value!r}.")
