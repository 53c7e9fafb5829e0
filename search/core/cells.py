"""Table cells as plain JSON values, and the latency label: one rule for ``select``, the export
bundle's model card, ``show`` and the service."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """A pandas/numpy cell as plain JSON: numpy scalars become Python ones; NaN, infinities and empty
    strings become None."""
    if value is None or (isinstance(value, str) and not value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plain_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A table row with every cell :func:`plain`."""
    return {key: plain(value) for key, value in row.items()}


def latency_label(source: Any, error_pct: Any) -> str | None:
    """``measured``, ``measured:remote``, ``predicted:analytic`` or ``predicted ±8%``: where a latency
    comes from, and for a calibrated prediction how far to trust it. None when the source is unknown."""
    source, error_pct = plain(source), plain(error_pct)
    if source is None:
        return None
    if error_pct is not None and str(source).startswith("predicted"):
        return f"predicted ±{float(error_pct):.0f}%"
    return str(source)
