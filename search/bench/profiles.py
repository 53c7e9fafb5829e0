"""``edgepareto bench profiles``: the analytic prior of each shipped device profile held against
published latencies of the same models on the same boards (``targets/profiles/published.csv``).

Each published row names a board, a model and its input size, a precision, a runtime, a thread
count, the clock the source states (when it states one) and a latency. Here the same model is built
(timm, ``pretrained=False``, or one of the two MLPerf Tiny reference networks defined below), exported
to ONNX with the project's exporter, analysed (``targets.graph.analyze``) and predicted by the prior
(``targets.profile.predict_seconds``) for the row's profile and threads. Two adjustments make the
comparison like for like, and both are approximations:

- precision: the exported graph is fp32. An ``int8`` row evaluates its MAC nodes at the profile's
  int8 rate (what the prior does for a QDQ graph); an ``fp16`` row (ncnn on Armv8.2 cores runs fp32
  models with fp16 arithmetic) evaluates them at the fp16 rate. Bytes stay those of the fp32 graph.
- clock: when a row states a clock other than the profile's, the profile's MAC rates and per-op
  overhead are scaled by the clock ratio (they are per-cycle quantities); memory bandwidth is not.

``compare`` and ``summarize`` are pure functions of the table, the graph costs and the profiles.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from search.core.errors import UserError
from targets.graph import GraphCost, analyze
from targets.profile import (
    PROFILE_DIR,
    Profile,
    compute_dtype,
    node_seconds,
    predict_seconds,
    shipped_profiles,
)

PUBLISHED_CSV = PROFILE_DIR / "published.csv"
REQUIRED_COLUMNS = (
    "profile", "board", "model", "timm_name", "input_px", "num_classes", "precision", "runtime",
    "threads", "clock_hz", "latency_ms", "source", "note",
)
PRECISIONS = ("fp32", "fp16", "int8")
#: Shipped profiles with no published figure, as (profile, reason). Every shipped profile has rows.
NO_PUBLISHED: tuple[tuple[str, str], ...] = ()
#: A row is compute-bound when at least this share of its prior time is in nodes whose compute term
#: exceeds their memory term (the rows a MAC-rate recalibration may use).
COMPUTE_BOUND_SHARE = 0.5
CostKey = tuple[str, int, int]  # (timm_name, input_px, num_classes)


def load_published(path: Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published table, checked: required columns, known precisions, positive latencies and
    thread counts, a non-empty source on every row. A problem is a ``UserError`` naming the row."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    for i, row in table.iterrows():
        where = f"{path} row {int(i) + 2}"  # the header is line 1
        if row["precision"] not in PRECISIONS:
            raise UserError(f"{where}: precision {row['precision']!r} is not one of {PRECISIONS}")
        if not row["latency_ms"] > 0 or not row["threads"] >= 1:
            raise UserError(f"{where}: latency_ms must be positive and threads at least 1")
        if not isinstance(row["source"], str) or not row["source"].strip():
            raise UserError(f"{where}: no source")
    return table


def mlperf_tiny_resnet8(num_classes: int = 10) -> nn.Module:
    """MLPerf Tiny image classification reference (``resnet_v1_eembc``, 16 filters, 32x32 input):
    a 3x3 stem and three residual stacks of two 3x3 convolutions (16, 32, 64 channels; the last two
    stride 2 with a 1x1 projection), average pooling and a dense layer."""

    def conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.BatchNorm2d(cout))

    class Stack(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(conv(cin, cout, s=stride), nn.ReLU(), conv(cout, cout))
            self.skip = nn.Identity() if stride == 1 else nn.Conv2d(cin, cout, 1, stride)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.skip(x) + self.body(x)).relu()

    return nn.Sequential(
        conv(3, 16), nn.ReLU(), Stack(16, 16, 1), Stack(16, 32, 2), Stack(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def mlperf_tiny_mobilenet_v1_025(num_classes: int = 2) -> nn.Module:
    """MLPerf Tiny visual wake words reference: MobileNetV1 at width 0.25 on 96x96 input (a 3x3
    stride-2 stem of 8 channels, 13 depthwise-separable blocks up to 256 channels, average pooling,
    a dense layer)."""
    # (output channels, stride) of the 13 depthwise-separable blocks
    blocks = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), *[(128, 1)] * 5, (256, 2), (256, 1))
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
    cin = 8
    for cout, stride in blocks:
        layers += [
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(),
        ]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


#: Models of the table that timm does not have, by the name the table gives them.
LOCAL_MODELS: dict[str, Callable[[int], nn.Module]] = {
    "mlperf_tiny_resnet8": mlperf_tiny_resnet8,
    "mlperf_tiny_mobilenet_v1_025": mlperf_tiny_mobilenet_v1_025,
}


def build_model(name: str, num_classes: int) -> nn.Module:
    """A table model with random weights: one of ``LOCAL_MODELS``, else timm's (``pretrained=False``)."""
    if name in LOCAL_MODELS:
        return LOCAL_MODELS[name](num_classes)
    import timm

    if not timm.is_model(name):
        raise UserError(f"unknown model {name!r} in {PUBLISHED_CSV.name}: neither timm's nor LOCAL_MODELS'")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def graph_costs(
    keys: Iterable[CostKey], cache_dir: Path, log: Callable[[str], None] = lambda _: None,
) -> dict[CostKey, GraphCost]:
    """Each (model, input px, classes) built once, exported to ``cache_dir`` (kept and reused when
    the file is already there) and analysed at batch 1."""
    from search.candidate.build import export_onnx

    costs = {}
    for name, px, classes in dict.fromkeys(keys):
        path = cache_dir / f"{name}-{px}px-{classes}c.onnx"
        if not path.is_file():
            log(f"exporting {name} at {px} px")
            torch.manual_seed(0)
            with torch.no_grad():
                export_onnx(build_model(name, classes).eval(), torch.randn(1, 3, px, px), path)
        costs[(name, px, classes)] = analyze(path)
    return costs


def as_precision(cost: GraphCost, precision: str) -> GraphCost:
    """The fp32 graph's cost with its MAC nodes evaluated at ``precision`` (an approximation of the
    quantized or half-precision graph: bytes and node count stay those of the fp32 graph).

    ``int8``: the graph is flagged as QDQ (``QuantizeLinear``/``DequantizeLinear`` keys with count
    0, no such nodes), so ``predict_seconds`` runs every MAC node at the int8 rate, as it does for a
    real QDQ graph. ``fp16``: MAC nodes are marked float16, so they run at the fp16 rate."""
    if precision == "fp32":
        return cost
    if precision == "int8":
        return replace(cost, op_counts={**cost.op_counts, "QuantizeLinear": 0, "DequantizeLinear": 0})
    if precision == "fp16":
        return replace(cost, nodes=tuple(replace(n, dtype="float16") if n.macs else n for n in cost.nodes))
    raise UserError(f"precision {precision!r} is not one of {PRECISIONS}")


def at_clock(profile: Profile, clock_hz: float | None) -> Profile:
    """``profile`` at another core clock: MAC rates and per-op overhead scale with it (per-cycle
    quantities), memory bandwidth does not. ``None`` or NaN: the profile as it is."""
    if clock_hz is None or (isinstance(clock_hz, float) and math.isnan(clock_hz)):
        return profile
    k = clock_hz / profile.clock_hz
    return replace(
        profile, clock_hz=clock_hz, per_op_overhead_s=profile.per_op_overhead_s / k,
        macs_per_s={d: None if r is None else r * k for d, r in profile.macs_per_s.items()},
    )


def compute_share(cost: GraphCost, profile: Profile, threads: int) -> float:
    """Share of the prior's time spent in nodes whose compute term is at least their memory term."""
    qdq = "QuantizeLinear" in cost.op_counts and "DequantizeLinear" in cost.op_counts
    cores = min(threads, profile.cores)
    total = bound = 0.0
    for n in cost.nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        seconds = node_seconds(n, profile, threads, qdq)
        total += seconds
        if n.macs:
            dtype = "int8" if qdq else compute_dtype(n)  # as node_seconds chooses it
            rate = (profile.macs_per_s[dtype] or profile.macs_per_s["float32"]) * cores
            memory = (n.param_bytes + 2 * n.activation_bytes) / profile.memory_bandwidth_bytes_per_s
            if n.macs / rate >= memory:
                bound += seconds
    return bound / total if total else 0.0


def compare(
    published: pd.DataFrame, costs: Mapping[CostKey, GraphCost], profiles: Mapping[str, Profile],
) -> pd.DataFrame:
    """One line per published row: the prior's prediction for it and ``ratio`` = prior / published
    (below 1: the prior is optimistic). ``compute_share`` says how compute-bound the prediction is."""
    lines = []
    for _, row in published.iterrows():
        cost = as_precision(costs[(row["timm_name"], int(row["input_px"]), int(row["num_classes"]))],
                            row["precision"])
        profile = at_clock(profiles[row["profile"]], row["clock_hz"])
        threads = int(row["threads"])
        prior_ms = predict_seconds(cost, profile, threads) * 1e3
        lines.append({
            "profile": row["profile"], "model": row["timm_name"], "px": int(row["input_px"]),
            "precision": row["precision"], "runtime": row["runtime"], "threads": threads,
            "published_ms": float(row["latency_ms"]), "prior_ms": prior_ms,
            "ratio": prior_ms / float(row["latency_ms"]),
            "compute_share": compute_share(cost, profile, threads),
        })
    return pd.DataFrame(lines)


def summarize(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per profile: rows, median and geometric-mean ratio (prior / published), mean absolute
    percentage error, and the share of rows within 25% and 50% of the published figure."""
    out = []
    for name, group in comparison.groupby("profile", sort=False):
        ratio = group["ratio"]
        error = (ratio - 1).abs()
        out.append({
            "profile": name, "rows": len(group), "median_ratio": float(ratio.median()),
            "gmean_ratio": float(math.exp(ratio.map(math.log).mean())),
            "mape_pct": float(100 * error.mean()), "within_25_pct": float(100 * (error <= 0.25).mean()),
            "within_50_pct": float(100 * (error <= 0.5).mean()),
        })
    return pd.DataFrame(out)


def rate_factor(
    comparison: pd.DataFrame, profile: str, precisions: Iterable[str], threads: int | None = 1,
) -> tuple[float, int]:
    """The recalibration rule's number: the geometric mean of prior / published over ``profile``'s
    compute-bound rows (``COMPUTE_BOUND_SHARE``) of the given precisions run on ``threads`` threads
    (None: any), and how many rows it rests on; NaN when there is none. Multiplying those
    precisions' MAC rates by it makes the prior match the rows on (geometric) average, up to the
    per-op overhead. Single-thread rows by default: the rates are per core, and multi-thread rows
    also carry the prior's assumption of linear scaling over cores, which no constant can fix."""
    rows = comparison[
        (comparison["profile"] == profile) & comparison["precision"].isin(list(precisions))
        & (comparison["compute_share"] >= COMPUTE_BOUND_SHARE)
    ]
    if threads is not None:
        rows = rows[rows["threads"] == threads]
    if rows.empty:
        return math.nan, 0
    return float(math.exp(rows["ratio"].map(math.log).mean())), len(rows)


def thread_exponents(published: pd.DataFrame) -> pd.DataFrame:
    """Per profile, the thread speed-up exponent the published rows show: for every model measured
    by the same runtime at the same precision with 1 thread and with n > 1 threads, log(t1 / tn) /
    log(n); the profile's value is their mean (rows: how many pairs). A profile without such pairs
    is left out."""
    rows = []
    keys = ["profile", "runtime", "timm_name", "input_px", "precision", "board"]
    for key, group in published.groupby(keys):
        single = group[group["threads"] == 1]
        if single.empty:
            continue
        t1 = float(single["latency_ms"].iloc[0])
        for _, row in group[group["threads"] > 1].iterrows():
            n = int(row["threads"])
            rows.append({"profile": key[0], "model": key[2], "threads": n,
                         "speedup": t1 / float(row["latency_ms"]),
                         "exponent": math.log(t1 / float(row["latency_ms"])) / math.log(n)})
    pairs = pd.DataFrame(rows)
    if pairs.empty:
        return pd.DataFrame(columns=["profile", "pairs", "exponent", "min", "max"])
    return pairs.groupby("profile")["exponent"].agg(
        pairs="size", exponent="mean", min="min", max="max").reset_index()


def bench_profiles(
    path: Path = PUBLISHED_CSV, profiles: Mapping[str, Profile] | None = None,
    cache_dir: Path | None = None, log: Callable[[str], None] = lambda _: None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison and its per-profile summary for the published table, with the shipped
    profiles unless ``profiles`` is given. Exported models go to ``cache_dir`` (a temporary folder,
    removed afterwards, when None)."""
    published = load_published(path)
    profiles = dict(shipped_profiles() if profiles is None else profiles)
    unknown = sorted(set(published["profile"]) - set(profiles))
    if unknown:
        raise UserError(f"{path}: unknown profile(s) {', '.join(unknown)}")
    keys = [(r.timm_name, int(r.input_px), int(r.num_classes)) for r in published.itertuples()]
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        costs = graph_costs(keys, cache_dir, log)
    else:
        with tempfile.TemporaryDirectory(prefix="edgepareto-profiles-") as tmp:
            costs = graph_costs(keys, Path(tmp), log)
    comparison = compare(published, costs, profiles)
    return comparison, summarize(comparison)


def format_profiles(
    comparison: pd.DataFrame, summary: pd.DataFrame, exponents: pd.DataFrame | None = None,
) -> str:
    """The printed tables: every row (published, prior, ratio), then the error per profile."""
    lines = [
        f"{'profile':<21} {'model':<29} {'px':>4} {'prec':<5} {'runtime':<26} {'thr':>3} "
        f"{'published ms':>12} {'prior ms':>9} {'ratio':>6} {'compute':>7}",
    ]
    for r in comparison.itertuples():
        lines.append(
            f"{r.profile:<21} {r.model:<29} {r.px:>4} {r.precision:<5} {r.runtime:<26} {r.threads:>3} "
            f"{r.published_ms:>12.2f} {r.prior_ms:>9.2f} {r.ratio:>6.2f} {r.compute_share:>7.0%}"
        )
    lines += [
        "",
        "ratio = prior / published (below 1: the prior is optimistic); compute: share of the prior's "
        "time in compute-bound nodes",
        "",
        f"{'profile':<21} {'rows':>4} {'median ratio':>12} {'gmean ratio':>11} {'MAPE %':>7} "
        f"{'within 25%':>10} {'within 50%':>10}",
    ]
    for s in summary.itertuples():
        lines.append(
            f"{s.profile:<21} {s.rows:>4} {s.median_ratio:>12.2f} {s.gmean_ratio:>11.2f} "
            f"{s.mape_pct:>7.0f} {s.within_25_pct:>9.0f}% {s.within_50_pct:>9.0f}%"
        )
    for name, reason in NO_PUBLISHED:
        lines.append(f"{name:<21} no published figure: {reason}")
    if exponents is not None and not exponents.empty:
        lines += ["", "thread speed-up exponent shown by 1-thread / n-thread pairs (n threads: n ** exponent "
                  "times faster; the profile's thread_speedup_exponent)"]
        lines += [f"{e.profile:<21} {e.pairs:>2} pairs  {e.exponent:.2f} (min {e.min:.2f}, max {e.max:.2f})"
                  for e in exponents.itertuples()]
    return "\n".join(lines)
