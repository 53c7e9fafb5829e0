"""Device profiles (data files in ``targets/profiles/``) and the analytic latency prior.

A profile states a device's compute constants (multiply-accumulates per second per core, by element
type), memory bandwidth, per-op overhead, memory sizes, supported dtypes and ops, and where every
number comes from. The prior is a per-node roofline plus a per-node overhead on the ONNX graph
analysis: ``max(MACs / throughput(dtype), bytes / bandwidth) + overhead``. It is uncalibrated, and
every latency it gives is labelled ``predicted:analytic``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search.core.errors import UserError
from search.core.text import first_line
from targets.base import TARGETS, Latency, Target
from targets.graph import GraphCost, NodeCost, analyze

PROFILE_DIR = Path(__file__).with_name("profiles")
#: The analytic prior's 90% prediction interval, as log(measured / predicted): the split-conformal
#: interval (``targets.predictor.conformal``) over the 51 published board measurements of
#: ``profiles/published.csv`` against the prior with the shipped constants (``edgepareto bench
#: profiles``): x0.56 to x1.55. A check against other runtimes on other people's boards, so wide.
PRIOR_INTERVAL = (-0.585, 0.438)
COMPUTE_DTYPES = ("float32", "int8", "float16")
#: Ops whose MACs run on integer kernels (QDQ graphs are fused into these by onnxruntime).
INT8_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")
REQUIRED = {
    "name": str, "description": str, "cores": int, "clock_hz": float, "macs_per_s": dict,
    "memory_bandwidth_bytes_per_s": float, "per_op_overhead_s": float, "ram_bytes": float,
    "flash_bytes": (float, type(None)), "dtypes": list, "unsupported_ops": list, "sources": dict,
}
#: Keys a profile may leave out, with their defaults.
OPTIONAL = {"thread_speedup_exponent": 1.0}


@dataclass(frozen=True)
class Profile:
    """One device, as its data file describes it."""

    name: str
    description: str
    cores: int
    clock_hz: float
    macs_per_s: dict[str, float | None]  # per core; None: no native arithmetic for that dtype
    memory_bandwidth_bytes_per_s: float
    per_op_overhead_s: float
    ram_bytes: float
    flash_bytes: float | None
    dtypes: tuple[str, ...]
    unsupported_ops: tuple[str, ...]
    sources: dict[str, str]
    #: n threads run compute n ** exponent times faster (1: linearly; published 1-to-n thread
    #: speed-ups of the board where they exist, ``search.bench.profiles.thread_exponents``).
    thread_speedup_exponent: float = 1.0

    @classmethod
    def load(cls, path: Path) -> Profile:
        """Read and validate a profile file; any problem is a ``UserError`` naming the file and key."""
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read profile {path}: {first_line(exc)}") from None
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: Any, where: str) -> Profile:
        if not isinstance(data, dict):
            raise UserError(f"profile {where}: expected a mapping")
        unknown = set(data) - set(REQUIRED) - set(OPTIONAL)
        if unknown:
            raise UserError(f"profile {where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key, kind in REQUIRED.items():
            if key not in data:
                raise UserError(f"profile {where}: missing key {key}")
            value = data[key]
            kinds = kind if isinstance(kind, tuple) else (kind,)
            if float in kinds and isinstance(value, int) and not isinstance(value, bool):
                value = data[key] = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise UserError(f"profile {where}: {key} has the wrong type ({type(value).__name__})")
        for key in ("clock_hz", "memory_bandwidth_bytes_per_s", "ram_bytes"):
            if data[key] <= 0:
                raise UserError(f"profile {where}: {key} must be positive")
        exponent = data.get("thread_speedup_exponent", OPTIONAL["thread_speedup_exponent"])
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not 0 < exponent <= 1:
            raise UserError(f"profile {where}: thread_speedup_exponent must be a number in (0, 1]")
        if "thread_speedup_exponent" in data and "thread_speedup_exponent" not in data["sources"]:
            raise UserError(f"profile {where}: sources do not say where thread_speedup_exponent comes from")
        if data["cores"] < 1 or data["per_op_overhead_s"] < 0:
            raise UserError(f"profile {where}: cores must be at least 1 and per_op_overhead_s >= 0")
        macs = data["macs_per_s"]
        if set(macs) != set(COMPUTE_DTYPES):
            raise UserError(f"profile {where}: macs_per_s needs exactly {', '.join(COMPUTE_DTYPES)}")
        for dtype, rate in macs.items():
            if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
                raise UserError(f"profile {where}: macs_per_s.{dtype} must be positive or null")
        if macs["float32"] is None:
            raise UserError(f"profile {where}: macs_per_s.float32 is required")
        documented = ("clock_hz", "memory_bandwidth_bytes_per_s", "per_op_overhead_s",
                      *(f"macs_per_s.{d}" for d in COMPUTE_DTYPES))
        undocumented = [k for k in documented if k not in data["sources"]]
        if undocumented:
            raise UserError(f"profile {where}: sources do not say where {', '.join(undocumented)} come from")
        return cls(
            name=data["name"], description=data["description"], cores=data["cores"],
            clock_hz=data["clock_hz"],
            macs_per_s={k: (None if v is None else float(v)) for k, v in macs.items()},
            memory_bandwidth_bytes_per_s=data["memory_bandwidth_bytes_per_s"],
            per_op_overhead_s=data["per_op_overhead_s"], ram_bytes=data["ram_bytes"],
            flash_bytes=data["flash_bytes"], dtypes=tuple(data["dtypes"]),
            unsupported_ops=tuple(data["unsupported_ops"]), sources=dict(data["sources"]),
            thread_speedup_exponent=float(exponent),
        )


def shipped_profiles() -> dict[str, Profile]:
    """The profiles shipped in ``targets/profiles/``, by name."""
    out = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        profile = Profile.load(path)
        if profile.name != path.stem:
            raise UserError(f"profile {path}: name {profile.name!r} must match the file name")
        out[profile.name] = profile
    return out


def find_profile(target: str) -> Profile | None:
    """A shipped profile by name, or a user's profile file (``--target ./myboard.yaml``)."""
    shipped = shipped_profiles()
    if target in shipped:
        return shipped[target]
    if target.endswith((".yaml", ".yml")):
        path = Path(target)
        if not path.is_file():
            raise UserError(f"no profile file at {path}")
        return Profile.load(path)
    return None


def compute_dtype(node: NodeCost) -> str:
    """The element type a node's multiply-accumulates run in."""
    if node.op_type in INT8_OPS:
        return "int8"
    return "float16" if node.dtype == "float16" else "float32"


def node_seconds(node: NodeCost, profile: Profile, threads: int, qdq: bool) -> float:
    """Roofline time of one node plus the per-op overhead. In a QDQ graph the MAC ops run int8."""
    cores = min(threads, profile.cores) ** profile.thread_speedup_exponent
    dtype = "int8" if qdq and node.macs else compute_dtype(node)
    rate = profile.macs_per_s[dtype] or profile.macs_per_s["float32"]  # no native dtype: fp32 kernels
    compute = node.macs / (rate * cores)
    memory = (node.param_bytes + 2 * node.activation_bytes) / profile.memory_bandwidth_bytes_per_s
    return max(compute, memory) + profile.per_op_overhead_s


def predict_seconds(cost: GraphCost, profile: Profile, threads: int = 1) -> float:
    """The analytic prior for a whole graph (nodes run one after another)."""
    qdq = "QuantizeLinear" in cost.op_counts and "DequantizeLinear" in cost.op_counts
    structural = ("QuantizeLinear", "DequantizeLinear") if qdq else ()
    return sum(
        node_seconds(n, profile, threads, qdq) for n in cost.nodes if n.op_type not in structural
    )


class ProfileTarget(Target):
    """A device predicted from its profile by the analytic prior (uncalibrated)."""

    measures = False

    def __init__(self, profile: Profile, threads: int = 1, repeats: int = 0) -> None:
        # ``repeats`` is accepted like every target's settings; a prediction is not repeated
        self.profile = profile
        self.name = profile.name
        self.threads = threads

    def latency(self, onnx_path: Path, input_shape: tuple[int, ...]) -> Latency:
        seconds = predict_seconds(analyze(onnx_path, batch=input_shape[0]), self.profile, self.threads)
        low, high = (seconds * 1e3 * math.exp(v) for v in PRIOR_INTERVAL)
        return Latency(
            median_ms=seconds * 1e3, p90_ms=seconds * 1e3, repeats=0, threads=self.threads,
            source="predicted:analytic", target=self.name, low_ms=low, high_ms=high,
        )

    def describe(self) -> str:
        return (
            f"{self.name}: {self.profile.description}; {self.threads} thread(s), predicted by the "
            "analytic roofline prior (uncalibrated)"
        )


def format_targets() -> str:
    """``edgepareto targets``: host, then each shipped profile with its constants."""
    lines = [
        "host                  this machine's CPU, measured with onnxruntime (--threads N)",
        "remote:URL            a device running 'edgepareto agent', measured there over HTTP "
        "(token: EDGEPARETO_AGENT_TOKEN or EDGEPARETO_AGENT_TOKEN_FILE)",
    ]
    for name, p in shipped_profiles().items():
        rates = ", ".join(
            f"{d} {r / 1e9:g}" if r else f"{d} -" for d, r in p.macs_per_s.items()
        )
        flash = f", flash {p.flash_bytes / 1e6:g} MB" if p.flash_bytes else ""
        lines.append(
            f"{name:<21} {p.description}\n{'':<22}predicted (analytic prior); {p.cores} core(s), "
            f"GMAC/s per core: {rates}; {p.memory_bandwidth_bytes_per_s / 1e9:g} GB/s; "
            f"RAM {p.ram_bytes / 1e6:g} MB{flash}; sources in targets/profiles/{name}.yaml"
        )
    lines.append(
        "PATH.yaml             your own device profile (same keys as targets/profiles/*.yaml)\n"
        "Each target predicts with its newest calibration (edgepareto calibrate) when one exists."
    )
    return "\n".join(lines)


def _register() -> None:
    for name, profile in shipped_profiles().items():
        TARGETS.register(name)(lambda threads=1, repeats=0, _p=profile: ProfileTarget(_p, threads, repeats))


_register()
