"""Strict reading of JSON settings into dataclasses: a misspelt key is an error, not a default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_known(cls: type, d: Mapping[str, Any], what: str) -> None:
    """Raise ValueError naming every key of ``d`` that is not a field of dataclass ``cls``."""
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} settings: {sorted(unknown)}")
