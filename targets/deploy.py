"""Deployability: does a candidate fit the device a profile describes?

A model is deployable when its weights and its peak activations fit the device's memory (weights in
flash where the profile has flash, else weights and activations together in RAM), and it uses no op
or element type the profile marks unsupported. Index arithmetic (int64 and bool tensors of shape
computations) is left out of the dtype check: every runtime handles it, or it is folded away once
the batch size is fixed for deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

from targets.graph import GraphCost
from targets.profile import Profile

INDEX_DTYPES = ("int64", "bool", "undefined")


@dataclass(frozen=True)
class Deployability:
    """The verdict for one model on one profile."""

    violation: float  # Optuna constraint value: <= 0 deployable; memory overrun as a fraction, 1+ for ops
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.violation <= 0


def deployability(cost: GraphCost, profile: Profile) -> Deployability:
    """Check memory, ops and dtypes; the constraint value grows with the overrun, so the search
    is steered back towards models that fit."""
    terms, reasons = [], []
    weights, peak = cost.param_bytes, cost.peak_activation_bytes
    if profile.flash_bytes is not None:
        terms.append(weights / profile.flash_bytes - 1)
        if weights > profile.flash_bytes:
            reasons.append(f"weights {weights / 1e6:.2f} MB exceed flash {profile.flash_bytes / 1e6:g} MB")
        terms.append(peak / profile.ram_bytes - 1)
        if peak > profile.ram_bytes:
            reasons.append(
                f"peak activations {peak / 1e6:.2f} MB exceed RAM {profile.ram_bytes / 1e6:g} MB"
            )
    else:
        terms.append((weights + peak) / profile.ram_bytes - 1)
        if weights + peak > profile.ram_bytes:
            reasons.append(
                f"weights {weights / 1e6:.2f} MB + peak activations {peak / 1e6:.2f} MB exceed "
                f"RAM {profile.ram_bytes / 1e6:g} MB"
            )
    ops = sorted(set(cost.op_counts) & set(profile.unsupported_ops))
    if ops:
        reasons.append(f"unsupported op(s) on {profile.name}: {', '.join(ops)}")
    dtypes = sorted(set(cost.dtypes) - set(profile.dtypes) - set(INDEX_DTYPES))
    if dtypes:
        reasons.append(f"unsupported dtype(s) on {profile.name}: {', '.join(dtypes)}")
    violation = max(terms)
    if ops or dtypes:
        violation = max(violation, 1.0)
    return Deployability(violation, tuple(reasons))
