"""Where a search's latencies come from: ``--latency measure|predict|hybrid`` on a target.

A target name resolves to up to three parts:

- a **measurer**: ``host`` (onnxruntime here), ``remote:URL`` (the agent on the device), or a
  device profile together with ``--agent URL``;
- a **predictor**: the target's calibration from ``edgepareto calibrate`` when one exists, else, for
  a device profile, the analytic roofline prior;
- a **profile**: the device's memory, dtypes and ops, which decide deployability.

``measure`` times every candidate; ``predict`` predicts every candidate; ``hybrid`` predicts every
candidate and measures the baselines and the ones whose prediction interval straddles the current
front (``search.front.pareto.straddles``: they may or may not join it), and the final front is
re-measured, so the models a user gets carry measured latencies.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from search.core.errors import UserError
from targets.base import Latency, Target, create_target
from targets.predictor import Calibration
from targets.profile import Profile, ProfileTarget, find_profile

MODES = ("measure", "predict", "hybrid")
CALIBRATIONS = "targets"  # under the runs root


def target_slug(target: str, threads: int) -> str:
    """A file-system name for a target's calibrations: ``host-1t``, ``remote-10.0.0.7-8765-1t``."""
    text = re.sub(r"^remote:(https?://)?", "remote-", target)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") + f"-{threads}t"


def calibration_dir(runs_root: Path, target: str, threads: int) -> Path:
    return Path(runs_root) / CALIBRATIONS / target_slug(target, threads)


def latest_calibration(runs_root: Path, target: str, threads: int) -> Path | None:
    """The newest ``calibration-*.json`` of a target (calibrations are never overwritten)."""
    found = sorted(calibration_dir(runs_root, target, threads).glob("calibration-*.json"))
    return found[-1] if found else None


def new_calibration_path(runs_root: Path, target: str, threads: int) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return calibration_dir(runs_root, target, threads) / f"calibration-{stamp}.json"


class CalibratedTarget(Target):
    """Predicts from a fitted calibration; every latency carries the calibration's CV error."""

    measures = False

    def __init__(self, calibration: Calibration, path: Path) -> None:
        self.calibration = calibration
        self.path = path
        self.name = calibration.target

    def latency(self, onnx_path: Path, input_shape: tuple[int, ...]) -> Latency:
        seconds = self.calibration.predict_seconds(onnx_path, batch=input_shape[0])
        low, high = self.calibration.bounds(seconds * 1e3) if any(self.calibration.interval) else (None, None)
        return Latency(
            median_ms=seconds * 1e3, p90_ms=seconds * 1e3, repeats=0, threads=self.calibration.threads,
            source="predicted:calibrated", target=self.name, error_pct=self.calibration.error_pct,
            low_ms=low, high_ms=high,
        )

    def describe(self) -> str:
        return (
            f"{self.name}: predicted by the calibration {self.path} ({self.calibration.samples} "
            f"measured models, cross-validated MAPE {self.calibration.error_pct:.1f}%)"
        )


@dataclass(frozen=True)
class LatencyPlan:
    """How a run scores latency on its target."""

    target: str
    mode: str
    measurer: Target | None
    predictor: Target | None
    profile: Profile | None

    @property
    def scorer(self) -> Target:
        """What every trial's latency comes from first (hybrid: the prediction)."""
        return self.measurer if self.mode == "measure" else self.predictor  # type: ignore[return-value]

    @property
    def final(self) -> Target:
        """What the final front is timed with: measured wherever the device is reachable."""
        return self.predictor if self.mode == "predict" else self.measurer  # type: ignore[return-value]

    @property
    def local_device(self) -> str | None:
        """The device slot of this machine when candidates are measured here, else None (a remote
        device or a prediction is not disturbed by work on this machine)."""
        if self.measurer is None or self.mode == "predict":
            return None
        return self.measurer.local_device

    def describe(self) -> str:
        parts = [f"latency {self.mode} on {self.target}"]
        if self.measurer is not None and self.mode != "predict":
            parts.append(f"measured: {self.measurer.describe()}")
        if self.predictor is not None and self.mode != "measure":
            parts.append(f"predicted: {self.predictor.describe()}")
        if self.profile is not None:
            parts.append(
                f"deployability: RAM {self.profile.ram_bytes / 1e6:g} MB"
                + (f", flash {self.profile.flash_bytes / 1e6:g} MB" if self.profile.flash_bytes else "")
            )
        return "; ".join(parts)


def make_measurer(
    target: str, profile: Profile | None, agent: str | None, threads: int, repeats: int,
    ca_file: str | None = None,
) -> Target | None:
    """What times candidates on ``target``: the target itself, the agent on a profile's device, or
    nothing (a profile without ``--agent``). ``ca_file`` verifies an https agent's certificate."""
    remote = f"remote:{agent}" if profile is not None and agent else target
    if ca_file and not remote.startswith("remote:"):
        raise UserError(f"--ca-file verifies an https agent's certificate; {target} has no agent",
                        field="ca_file")
    tls = {"ca_file": ca_file} if ca_file else {}
    if profile is not None:
        return create_target(remote, threads=threads, repeats=repeats, **tls) if agent else None
    if agent:
        raise UserError(f"--agent names the device of a profile target; {target} is measured directly")
    return create_target(target, threads=threads, repeats=repeats, **tls)


def plan_latency(
    target: str, mode: str | None, agent: str | None, threads: int, repeats: int, runs_root: Path,
    ca_file: str | None = None,
) -> LatencyPlan:
    """Resolve a target name and ``--latency`` into a plan; impossible combinations are UserErrors."""
    if mode is not None and mode not in MODES:
        raise UserError(f"--latency must be one of {', '.join(MODES)}, got {mode!r}")
    profile = find_profile(target)
    measurer = make_measurer(target, profile, agent, threads, repeats, ca_file)
    path = latest_calibration(runs_root, target, threads)
    if path is not None:
        predictor: Target | None = CalibratedTarget(Calibration.load(path), path)
    elif profile is not None:
        predictor = ProfileTarget(profile, threads)
    else:
        predictor = None
    mode = mode or ("measure" if measurer is not None else "predict")
    if mode in ("measure", "hybrid") and measurer is None:
        raise UserError(
            f"{target} cannot be measured from here: run 'edgepareto agent' on the device and pass "
            "--agent http://DEVICE:8765, or use --latency predict"
        )
    if mode in ("predict", "hybrid") and predictor is None:
        raise UserError(
            f"no calibration for {target} with {threads} thread(s) in "
            f"{calibration_dir(runs_root, target, threads)}: "
            f"run 'edgepareto calibrate --target {target}' first, or use --latency measure"
        )
    return LatencyPlan(target, mode, measurer, predictor, profile)
