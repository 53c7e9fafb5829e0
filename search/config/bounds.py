"""Bounds on every size-like setting: one table, read by ``RunConfig.validate``, the service's request
model and the README.

A value outside its bound is a ``UserError`` naming the setting (CLI: one line, exit 2; service: 422
naming the field) before any work starts. The in-memory data set is checked apart, against the memory
the machine has (``dataset_bytes``, ``search.task.data.check_memory``), since its size depends on the
data as well as on ``img_size``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.errors import UserError

DAY_S = 86_400.0


@dataclass(frozen=True)
class Bound:
    """The range of one numeric setting: ``low`` (excluded when ``open_low``) to ``high``, inclusive."""

    low: float
    high: float
    integer: bool = True
    open_low: bool = False
    unit: str = ""

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is of the right kind (an int, or any finite number) and in range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        """``an integer from 8 to 2048``, ``a number of seconds above 0 and at most 2592000``."""
        kind = "an integer" if self.integer else "a number"
        unit = f" of {self.unit}" if self.unit else ""
        low, high = _number(self.low), _number(self.high)
        if self.open_low:
            return f"{kind}{unit} above {low} and at most {high}"
        return f"{kind}{unit} from {low} to {high}"

    def constraints(self) -> dict[str, float]:
        """The same range as pydantic ``Field`` keywords (``gt``/``ge``, ``le``)."""
        return {"gt" if self.open_low else "ge": self.low, "le": self.high}


#: RunConfig field -> its bound. ``None`` (where a field allows it) means "automatic" and is not checked.
BOUNDS: dict[str, Bound] = {
    "img_size": Bound(8, 2048),
    "patch_size": Bound(1, 2048),
    "epochs": Bound(0, 1000),
    "batch_size": Bound(1, 4096),
    "workers": Bound(0, 256),
    "trials": Bound(1, 100_000),
    "timeout": Bound(0, 30 * DAY_S, integer=False, open_low=True, unit="seconds"),
    "trial_timeout": Bound(0, 30 * DAY_S, integer=False, open_low=True, unit="seconds"),
    "threads": Bound(1, 1024),
    "repeats": Bound(5, 10_000),
    "cpus_per_trial": Bound(1, 1024),
    "max_concurrent": Bound(1, 1024),
    "gpus_per_trial": Bound(0, 64, integer=False),
    "seed": Bound(0, 2**32 - 1),  # numpy's and scikit-learn's seed range
    "sampler_seed": Bound(0, 2**32 - 1),
}


#: Flags of the other commands (calibrate, bench, serve, analyze) that are not RunConfig settings. Their
#: flags that are (``--img-size``, ``--threads``, ``--repeats``, ...) use ``BOUNDS``' entries.
FLAG_BOUNDS: dict[str, Bound] = {
    "samples": Bound(1, 100_000),  # calibrate: models measured
    "calibrate_repeats": Bound(1, 10_000),  # calibrate: timed runs per pass (a median of each pass)
    "train": Bound(1, 100_000),  # bench predictor: models fitted on
    "held_out": Bound(1, 100_000),  # bench predictor: models scored
    "seeds": Bound(1, 1000),  # bench search
    "clients": Bound(1, 1000),  # bench service: concurrent requests
    "bursts": Bound(1, 10_000),
    "searches": Bound(1, 1000),  # bench service --soak
    "kills": Bound(0, 100),
    "max_running": Bound(0, 1024),  # serve: searches at once (0: queue only)
    "port": Bound(1, 65_535),
    "max_body_bytes": Bound(1024, 64 * 2**20, unit="bytes"),
    "batch": Bound(1, 4096),  # analyze
    "db_retry_s": Bound(0, DAY_S, integer=False, unit="seconds"),  # search, worker: wait for the database
}


def bound_of(field: str) -> Bound:
    """The bound of a RunConfig setting or of another command's flag."""
    return BOUNDS[field] if field in BOUNDS else FLAG_BOUNDS[field]


def parse_bounded(field: str, text: str) -> int | float:
    """A flag's text as the number its bound allows; ``ValueError`` with the bound when it is not."""
    bound = bound_of(field)
    try:
        value: int | float = int(text) if bound.integer else float(text)
    except ValueError:
        raise ValueError(f"must be {bound.describe()}, got {text!r}") from None
    if not bound.contains(value):
        raise ValueError(f"must be {bound.describe()}, got {text}")
    return value


def flag(field: str) -> str:
    """``img_size`` -> ``--img-size``."""
    return "--" + field.replace("_", "-")


def check_bound(field: str, value: Any) -> None:
    """``UserError`` naming ``field`` when ``value`` lies outside ``BOUNDS[field]``."""
    bound = BOUNDS[field]
    if not bound.contains(value):
        raise UserError(f"{flag(field)} must be {bound.describe()}, got {value!r}", field=field)


# ---------------------------------------------------------------- memory of the in-memory data set

#: Float tensors of the whole data set alive at once while it is loaded (read, normalised, split).
DATA_COPIES = 3
#: Share of the available memory the data set may take (the rest: models, training, onnxruntime).
MEMORY_SHARE = 0.5


def dataset_bytes(images: int, img_size: int, copies: int = DATA_COPIES) -> int:
    """Bytes of ``images`` RGB float32 images of ``img_size`` squared, ``copies`` times over."""
    return images * 3 * img_size * img_size * 4 * copies


def available_memory() -> int | None:
    """Bytes this machine can still give: ``MemAvailable`` (else the free pages), and no more than
    the room left under a cgroup v2 memory limit (a container); None when unknown."""
    sizes = [_meminfo_available(), _cgroup_room()]
    known = [n for n in sizes if n is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def check_data_memory(images: int, img_size: int, available: int | None, datasets: int = 1) -> None:
    """``UserError`` naming ``img_size`` when ``datasets`` data sets of ``images`` at ``img_size`` (each
    held once, the last one loading: ``DATA_COPIES``) would not fit in ``MEMORY_SHARE`` of the
    ``available`` bytes (None: unknown, not checked)."""
    copies = DATA_COPIES + datasets - 1
    need = dataset_bytes(images, img_size, copies)
    if available is None or need <= MEMORY_SHARE * available:
        return
    fits = math.isqrt(int(MEMORY_SHARE * available) // dataset_bytes(max(images, 1), 1, copies))
    hint = f"use --img-size {fits} or less" if fits >= BOUNDS["img_size"].low else "use fewer images"
    raise UserError(
        f"--img-size {img_size}: {images} images need about {_gb(need)} in memory, more than "
        f"{MEMORY_SHARE:.0%} of the {_gb(available)} this machine has available; {hint}",
        field="img_size",
    )


def _number(x: float) -> str:
    """``2592000``, not ``2.592e+06``; ``0.5`` stays ``0.5``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"
