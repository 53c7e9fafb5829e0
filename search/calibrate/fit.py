"""``edgepareto calibrate`` and ``edgepareto bench predictor``: fit and check a latency predictor.

Both sample diverse candidates (``search.calibrate.candidates``), time them on the device side by side
(interleaved passes, so a slow spell of a shared machine hits every model alike), time every executed
node with onnxruntime's profiler on the device, and analyse their graphs. ``calibrate`` cross-validates
the predictor models, fits the chosen one on every sample and stores it under
``runs/targets/<target>/``; with ``--from`` it adapts another device's kernel-level calibration from a
few samples instead (``targets.predictor.fit_transfer``). ``bench predictor`` fits on one set of
candidates and scores a held-out set, next to the model-level baselines, the FLOPs-proportional
baseline and the uncalibrated prior; ``bench predictor --from`` measures transfer.
"""

from __future__ import annotations

import datetime as dt
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from search.calibrate.candidates import CandidateFile, sample_candidates
from search.core.atomic import write_with
from search.core.errors import UserError
from targets.base import Target
from targets.graph import analyze
from targets.kernels import Kernels, join_profile, model_kernels, named_bytes
from targets.latency import calibration_dir, make_measurer, new_calibration_path
from targets.predictor import (
    FEATURES,
    KERNEL_LEVEL,
    MODELS,
    Calibration,
    Score,
    conformal,
    coverage_of,
    cross_validate_kernels,
    fit_calibration,
    fit_kernel_level,
    fit_transfer,
    graph_features,
    out_of_fold,
    predict_kernel_level,
    score,
    stack,
    transfer_out_of_fold,
)
from targets.profile import Profile, find_profile, predict_seconds, shipped_profiles

#: Base models sampled by default: a CNN, a depthwise-separable CNN and a ViT.
DEFAULT_MODELS = ("resnet18", "mobilenetv3_small_100", "vit_tiny_patch16_224")
#: Interleaved timing passes, and timed runs per pass (after the target's warm-up).
PASSES = 10
#: Profiled passes (each ``repeats`` runs per model), spread among the timing passes.
PROFILE_PASSES = 2
MIN_SAMPLES = 10
#: Fewest samples a transferred calibration (``--from``) is fitted on.
MIN_TRANSFER_SAMPLES = 5
#: Sample counts of the transfer benchmark.
TRANSFER_SIZES = (10, 20, 50)
BURST = 10
#: The analytic prior needs a profile; ``host`` and bare remotes use this one (a generic Arm core).
FALLBACK_PROFILE = "arm-a53-1core"


@dataclass(frozen=True)
class Samples:
    """Measured candidates: features, analytic prior, measured seconds, and labels; with their
    executed kernels, each kernel's profiled microseconds (NaN where the profiler did not report
    it), every timing pass (passes x models, seconds) and the executed-graph settings."""

    x: np.ndarray
    prior: np.ndarray
    y: np.ndarray
    frame: pd.DataFrame
    kernels: tuple[Kernels, ...] = ()
    node_us: tuple[np.ndarray, ...] = ()
    times: np.ndarray | None = None
    graph: dict = field(default_factory=dict)

    def subset(self, index: Sequence[int]) -> Samples:
        """The samples at ``index`` (in that order)."""
        idx = list(index)
        return Samples(
            self.x[idx], self.prior[idx], self.y[idx], self.frame.iloc[idx].reset_index(drop=True),
            tuple(self.kernels[i] for i in idx) if self.kernels else (),
            tuple(self.node_us[i] for i in idx) if self.node_us else (),
            None if self.times is None else self.times[:, idx], self.graph,
        )


def measuring_target(
    target: str, agent: str | None, threads: int, repeats: int, ca_file: str | None = None,
) -> Target:
    """What times the candidates: the target itself, or the agent on a profile's device."""
    measurer = make_measurer(target, find_profile(target), agent, threads, repeats, ca_file)
    if measurer is None:
        raise UserError(
            f"calibrating {target} needs measurements on the device: run 'edgepareto agent' there "
            "and pass --agent http://DEVICE:8765"
        )
    return measurer


def measure_samples(
    files: Sequence[CandidateFile], measurer: Target, profile: Profile, passes: int = PASSES,
    log: Callable[[str], None] = lambda _m: None, threads: int = 1,
) -> Samples:
    """Analyse every file, time them all in ``passes`` interleaved passes of short bursts, and time
    every executed node in ``PROFILE_PASSES`` profiled passes among them.

    A model's latency is its fastest run over all passes: on a shared machine the noise only ever
    adds time, and it comes in spells; the best of bursts spread over minutes is what the model
    costs on a quiet device (measured here: two such timings of the same 60 models agree within
    ±10% for 97% of them, against 73% for one median of 100 back-to-back runs). A node's time is
    the mean of its profiled passes (``targets.agent.profile_nodes``), joined to the executed
    graph's kernels by node name (every node named first, ``targets.kernels.named``).
    """
    costs = [analyze(f.path, batch=f.input_shape[0]) for f in files]
    disabled = measurer.disabled_optimizers()
    named = []
    for f in files:
        path = f.path.with_name(f.path.stem + ".named.onnx")
        path.write_bytes(named_bytes(f.path))
        named.append(path)
    log(f"reading the executed graphs of {len(files)} models")
    ks = tuple(model_kernels(n, f.input_shape[0], threads, disabled) for n, f in zip(named, files))
    times = np.empty((passes, len(files)))
    node_sum = [np.zeros(len(k)) for k in ks]
    node_seen = [np.zeros(len(k)) for k in ks]
    profile_after = {round((i + 1) * passes / PROFILE_PASSES) - 1 for i in range(PROFILE_PASSES)}
    for p in range(passes):
        log(f"timing pass {p + 1}/{passes} over {len(files)} models")
        for i, f in enumerate(files):
            latency = measurer.latency(f.path, f.input_shape)
            times[p, i] = (latency.min_ms if latency.min_ms is not None else latency.median_ms) / 1e3
        if p in profile_after:
            log(f"profiling every node of {len(files)} models")
            for i, (f, k) in enumerate(zip(files, ks)):
                us = join_profile(k, measurer.node_times(named[i], f.input_shape))
                node_sum[i] += np.nan_to_num(us)
                node_seen[i] += np.isfinite(us)
    node_us = tuple(np.where(seen > 0, total / np.maximum(seen, 1), np.nan)
                    for total, seen in zip(node_sum, node_seen))
    matched = sum(int(np.isfinite(u).sum()) for u in node_us) / max(sum(len(k) for k in ks), 1)
    log(f"profiled {matched:.1%} of the executed graphs' nodes")
    y = times.min(axis=0)
    prior = np.array([predict_seconds(c, profile) for c in costs])
    frame = pd.DataFrame({
        "model": [f.model for f in files], "techniques": [f.techniques for f in files],
        "measured_ms": y * 1e3, "spread": (np.median(times, 0) - y) / y,
        "macs": [c.macs for c in costs], "prior_ms": prior * 1e3,
        "kernels": [len(k) for k in ks],
        "kernel_sum_ms": [float(np.nansum(u)) / 1e3 for u in node_us],
    })
    x = stack([graph_features(f.path, f.input_shape[0]) for f in files])
    return Samples(x, prior, y, pd.concat([frame, pd.DataFrame(x, columns=FEATURES)], axis=1),
                   ks, node_us, times, {"disabled_optimizers": list(disabled)})


def collect(
    target: str, agent: str | None, count: int, models: Sequence[str], img_size: int, threads: int,
    repeats: int, seed: int, log: Callable[[str], None], ca_file: str | None = None,
) -> Samples:
    measurer = measuring_target(target, agent, threads, repeats, ca_file)
    profile = find_profile(target) or shipped_profiles()[FALLBACK_PROFILE]
    with tempfile.TemporaryDirectory(prefix="edgepareto-calibrate-") as tmp:
        files = []
        for f in sample_candidates(models, img_size, count, Path(tmp), seed=seed, log=log):
            files.append(f)
            if len(files) % 10 == 0:
                log(f"built {len(files)}/{count} candidates")
        return measure_samples(files, measurer, profile, log=log, threads=threads)


def find_source(runs_root: Path, source: str) -> tuple[Calibration, Path]:
    """Device A's calibration for ``--from``: a calibration file, a folder of ``runs/targets/``
    (``host-1t``: its newest), or a target name with exactly one such folder. It must be
    kernel-level (only those transfer)."""
    path = Path(source)
    folder = Path(runs_root) / "targets" / source
    if not path.is_file():
        if not folder.is_dir():
            base = calibration_dir(runs_root, source, 1).name[: -len("-1t")]
            found = sorted(folder.parent.glob(f"{base}-*t")) if folder.parent.is_dir() else []
            if len(found) != 1:
                known = ", ".join(sorted(d.name for d in folder.parent.glob("*") if d.is_dir())) or "none"
                raise UserError(f"--from {source}: no single calibration folder matches it in "
                                f"{folder.parent} (calibrated: {known}); name the folder or the file")
            folder = found[0]
        newest = sorted(folder.glob("calibration-*.json"))
        if not newest:
            raise UserError(f"--from {source}: {folder} holds no calibration")
        path = newest[-1]
    calibration = Calibration.load(path)
    if calibration.model != KERNEL_LEVEL:
        raise UserError(f"--from {path}: a {calibration.model} calibration cannot be transferred; "
                        f"calibrate that device again (this version fits {KERNEL_LEVEL})")
    return calibration, path


def calibrate(
    target: str, agent: str | None = None, samples: int = 150, models: Sequence[str] = DEFAULT_MODELS,
    img_size: int = 32, threads: int = 1, repeats: int = BURST, runs_root: Path = Path("runs"), seed: int = 0,
    log: Callable[[str], None] = lambda _m: None, ca_file: str | None = None, source: str | None = None,
) -> tuple[Calibration, Path]:
    """Sample, measure, cross-validate, fit, store. With ``source`` (``--from``: another device's
    kernel-level calibration) the predictor is A's adapted to this device from ``samples`` models
    (at least ``MIN_TRANSFER_SAMPLES``), its error leave-one-out. Returns the calibration and where
    it was written."""
    origin = None
    if source is not None:
        origin = find_source(runs_root, source)
        if samples < MIN_TRANSFER_SAMPLES:
            raise UserError(f"--samples must be at least {MIN_TRANSFER_SAMPLES} with --from")
    elif samples < MIN_SAMPLES:
        raise UserError(f"--samples must be at least {MIN_SAMPLES} (5-fold cross-validation)")
    data = collect(target, agent, samples, models, img_size, threads, repeats, seed, log, ca_file)
    created = dt.datetime.now().isoformat(timespec="seconds")
    if origin is not None:
        calibration = transfer_calibration(origin[0], data, target=target, threads=threads,
                                           created=created, device=_device(target, agent),
                                           origin=f"transfer from {origin[1]}")
    else:
        calibration = fit_calibration(
            data.x, data.prior, data.y, target=target, threads=threads, created=created,
            device=_device(target, agent), kernels=data.kernels, node_us=data.node_us, graph=data.graph,
        )
    path = new_calibration_path(runs_root, target, threads)
    calibration.save(path)
    write_with(path.with_suffix(".samples.csv"), lambda tmp: data.frame.to_csv(tmp, index=False))
    return calibration, path


def transfer_calibration(
    source: Calibration, data: Samples, *, target: str, threads: int, created: str, device: str,
    origin: str,
) -> Calibration:
    """Device A's kernel-level calibration adapted to the device ``data`` was measured on."""
    oof = transfer_out_of_fold(source.params, data.kernels, data.y)
    return Calibration(
        target=target, model=KERNEL_LEVEL,
        params=fit_transfer(source.params, data.kernels, data.y, data.graph),
        feature_names=FEATURES, cv={KERNEL_LEVEL: asdict(score(oof, data.y))}, samples=len(data.y),
        threads=threads, created=created, device=device, interval=tuple(conformal(oof, data.y)),
        origin=origin,
    )


def format_calibration(calibration: Calibration, path: Path) -> str:
    how = "leave-one-out" if calibration.origin != "scratch" else "5-fold cross-validation"
    lines = [
        f"calibration of {calibration.target} ({calibration.threads} thread(s)) on "
        f"{calibration.samples} measured models ({calibration.origin}), {how}:",
    ]
    for name, s in calibration.cv.items():
        mark = "  <- chosen" if name == calibration.model else ""
        lines.append(f"  {name:<14} {Score(**s)}{mark}")
    low, high = calibration.bounds(1.0)
    lines.append(f"prediction interval (90%): x{low:.3f} to x{high:.3f} of the predicted latency")
    lines.append(f"written to {path} (the newest calibration of a target is the one used)")
    return "\n".join(lines)


#: Held-out classes reported beside the overall share: name -> test on (model, techniques).
CLASSES: dict[str, Callable[[str, str], bool]] = {
    "fp32": lambda m, t: "quantize(" not in t,
    "fp16": lambda m, t: "fp16" in t,
    "int8-dyn": lambda m, t: "int8-dyn" in t,
    "int8-static": lambda m, t: "int8-qdq" in t,
    "pruned": lambda m, t: "prune(" in t,
    "low-rank": lambda m, t: "lowrank(" in t,
    "ViT": lambda m, t: m.startswith(("vit", "deit")),
    "token-merged": lambda m, t: "tokens(" in t,
}


def class_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per class, which rows of ``frame`` (model, techniques) belong to it (a model can be in several)."""
    pairs = list(zip(frame["model"], frame["techniques"]))
    return {name: np.array([test(m, t) for m, t in pairs], bool) for name, test in CLASSES.items()}


def scores_by_class(predicted: np.ndarray, measured: np.ndarray, masks: dict[str, np.ndarray]) -> dict:
    """Overall and per-class share within ±10% (NaN for an empty class)."""
    out = {"within_10pct": score(predicted, measured).within, "mape_pct": score(predicted, measured).mape}
    for name, mask in masks.items():
        out[name] = score(predicted[mask], measured[mask]).within if mask.any() else float("nan")
    return out


def bench_predictor(
    target: str = "host", agent: str | None = None, train: int = 150, held_out: int = 60,
    models: Sequence[str] = DEFAULT_MODELS, img_size: int = 32, threads: int = 1, repeats: int = BURST,
    save_to: Path | None = None, log: Callable[[str], None] = lambda _m: None, ca_file: str | None = None,
) -> pd.DataFrame:
    """Fit every predictor on ``train`` candidates and score it on ``held_out`` other ones, all timed
    in the same interleaved passes: held-out share within ±10% and MAPE, per class, and the 5-fold
    cross-validated share on the fitting set; the repeatability ceiling (two independent timings of
    the held-out set: the even and the odd passes); the kernel-level interval's held-out coverage."""
    data = collect(target, agent, train + held_out, models, img_size, threads, repeats, 0, log, ca_file)
    return predictor_table(data, train, save_to, log)


def predictor_table(
    data: Samples, train: int, save_to: Path | None = None, log: Callable[[str], None] = lambda _m: None,
) -> pd.DataFrame:
    """``bench predictor``'s table from measured samples: a seeded ``train`` of them to fit on, the
    rest held out."""
    order = np.random.default_rng(1).permutation(len(data.y))
    fit, test = data.subset(order[:train]), data.subset(order[train:])
    masks = class_masks(test.frame)
    log("cross-validating on the fitting set")
    cv = {name: score(p, fit.y).within for name, p in out_of_fold(fit.x, fit.prior, fit.y).items()}
    oof_kernel = cross_validate_kernels(fit.kernels, fit.node_us, fit.y)
    cv[KERNEL_LEVEL] = score(oof_kernel, fit.y).within
    predictions = {
        KERNEL_LEVEL: predict_kernel_level(
            fit_kernel_level(fit.kernels, fit.node_us, fit.y, fit.graph), test.kernels),
        **{name: model(fit.x, fit.prior, fit.y)(test.x, test.prior) for name, model in MODELS.items()},
        "prior (uncalibrated)": test.prior,
    }
    rows = [{"predictor": name, **scores_by_class(p, test.y, masks), "cv_within_10pct": cv.get(name)}
            for name, p in predictions.items()]
    first, second = test.times[0::2].min(axis=0), test.times[1::2].min(axis=0)
    rows.append({"predictor": "repeatability (two timings)", **scores_by_class(first, second, masks)})
    table = pd.DataFrame(rows)
    interval = conformal(oof_kernel, fit.y)
    table.attrs["coverage"] = coverage_of(predictions[KERNEL_LEVEL], test.y, interval)
    table.attrs["interval"] = interval
    table.attrs["counts"] = {name: int(mask.sum()) for name, mask in masks.items()}
    if save_to is not None:  # every sample, its split and features: the numbers behind the table
        frame = data.frame.assign(split="fit")
        frame.loc[frame.index[order[train:]], "split"] = "held-out"
        save_to.parent.mkdir(parents=True, exist_ok=True)
        write_with(save_to, lambda tmp: frame.to_csv(tmp, index=False))
        table.attrs["saved"] = str(save_to)
    table.attrs["mix"] = _mix(test.frame)
    table.attrs["spread"] = float(np.median(test.frame["spread"]))
    return table


def bench_transfer(
    source: str, target: str = "host", agent: str | None = None, sizes: Sequence[int] = TRANSFER_SIZES,
    held_out: int = 60, models: Sequence[str] = DEFAULT_MODELS, img_size: int = 32, threads: int = 2,
    repeats: int = BURST, runs_root: Path = Path("runs"), log: Callable[[str], None] = lambda _m: None,
    ca_file: str | None = None,
) -> pd.DataFrame:
    """Device A's calibration (``source``) adapted to device B (``target`` at ``threads``) from the
    first 10, 20 and 50 of B's samples, against B calibrated from scratch on the same samples and
    against A's predictor unadapted; all scored on B's ``held_out`` other models, with each
    predictor's interval coverage. ``attrs['kinds']``: per kernel kind, B's profiled time over A's
    prediction (how differently the two devices cost each kind)."""
    calibration, path = find_source(runs_root, source)
    data = collect(target, agent, max(sizes) + held_out, models, img_size, threads, repeats, 1, log, ca_file)
    return transfer_table(calibration, path, data, sizes, log)


def transfer_table(
    calibration: Calibration, path: Path, data: Samples, sizes: Sequence[int] = TRANSFER_SIZES,
    log: Callable[[str], None] = lambda _m: None,
) -> pd.DataFrame:
    """``bench predictor --from``'s table from device B's measured samples: the first ``sizes`` of a
    seeded order to adapt or fit on, the rest held out."""
    order = np.random.default_rng(2).permutation(len(data.y))
    test = data.subset(order[max(sizes):])
    rows = [{"predictor": f"A unadapted ({path.parent.name})", "samples": 0,
             **_scored(predict_kernel_level(calibration.params, test.kernels), test.y)}]
    for n in sizes:
        part = data.subset(order[:n])
        oof = transfer_out_of_fold(calibration.params, part.kernels, part.y)
        params = fit_transfer(calibration.params, part.kernels, part.y, part.graph)
        predicted = predict_kernel_level(params, test.kernels)
        rows.append({"predictor": "transfer from A", "samples": n, **_scored(predicted, test.y),
                     "coverage_90": coverage_of(predicted, test.y, conformal(oof, part.y))})
        log(f"from scratch on {n} samples")
        scratch = fit_calibration(part.x, part.prior, part.y, target="B", threads=0, created="", device="",
                                  kernels=part.kernels, node_us=part.node_us, graph=part.graph)
        if scratch.model == KERNEL_LEVEL:
            predicted = predict_kernel_level(scratch.params, test.kernels)
        else:
            predicted = MODELS[scratch.model](part.x, part.prior, part.y)(test.x, test.prior)
        rows.append({"predictor": f"B from scratch ({scratch.model})", "samples": n,
                     **_scored(predicted, test.y),
                     "coverage_90": coverage_of(predicted, test.y, list(scratch.interval))})
    table = pd.DataFrame(rows)
    table.attrs["kinds"] = _kind_ratios(calibration.params, data)
    table.attrs["source"] = str(path)
    return table


def _scored(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    s = score(predicted, measured)
    return {"within_10pct": s.within, "mape_pct": s.mape}


def _kind_ratios(source: dict, data: Samples) -> pd.DataFrame:
    """Per kernel kind: B's profiled microseconds over A's predicted ones (median, and the 10th and
    90th percentiles over nodes), with the kind's share of B's kernel time."""
    from targets.kernels import predict_nodes

    rows = []
    for k, us in zip(data.kernels, data.node_us):
        a = predict_nodes(source["nodes"], k)
        rows += [{"kind": kind, "ratio": b / x, "us": b}
                 for kind, x, b in zip(k.kinds, a, us) if np.isfinite(b)]
    frame = pd.DataFrame(rows)
    total = frame["us"].sum()
    out = frame.groupby("kind").agg(
        nodes=("ratio", "size"), share=("us", lambda v: v.sum() / total),
        median=("ratio", "median"), p10=("ratio", lambda v: v.quantile(0.1)),
        p90=("ratio", lambda v: v.quantile(0.9)),
    )
    return out.sort_values("share", ascending=False).reset_index()


def _mix(frame: pd.DataFrame) -> str:
    t = frame["techniques"]
    parts = {
        "CNN": int((~frame["model"].str.startswith(("vit", "deit"))).sum()),
        "ViT": int(frame["model"].str.startswith(("vit", "deit")).sum()),
        "int8": int(t.str.contains("int8").sum()),
        "fp16": int(t.str.contains("fp16").sum()),
        "pruned": int(t.str.contains("prune").sum()),
        "low-rank": int(t.str.contains("lowrank").sum()),
        "token-merged": int(t.str.contains("tokens").sum()),
    }
    return ", ".join(f"{k} {v}" for k, v in parts.items())


def format_bench(table: pd.DataFrame) -> str:
    percent = {c: "{:.1%}".format for c in table.columns if c not in ("predictor", "mape_pct", "held_out")}
    text = table.to_string(index=False, na_rep="-", formatters={**percent, "mape_pct": "{:.1f}%".format})
    counts = ", ".join(f"{k} {v}" for k, v in table.attrs.get("counts", {}).items())
    mix = f"held-out mix: {table.attrs.get('mix', '')}"
    lines = [text, mix + (f" (per class: {counts})" if counts else "")]
    if "coverage" in table.attrs:
        low, high = (np.exp(v) for v in table.attrs["interval"])
        lines.append(f"{KERNEL_LEVEL} 90% interval (x{low:.3f} to x{high:.3f}, from 5-fold CV on the "
                     f"fitting set): held-out coverage {table.attrs['coverage']:.1%}")
    lines.append(f"median gap between a model's median pass and its fastest run: "
                 f"{table.attrs.get('spread', 0):.1%}")
    if "saved" in table.attrs:
        lines.append(f"samples: {table.attrs['saved']}")
    return "\n".join(lines)


def format_transfer(table: pd.DataFrame) -> str:
    text = table.to_string(index=False, na_rep="-", formatters={
        "within_10pct": "{:.1%}".format, "mape_pct": "{:.1f}%".format, "coverage_90": "{:.1%}".format,
    })
    kinds = table.attrs["kinds"].head(12).to_string(index=False, formatters={
        "share": "{:.1%}".format, "median": "{:.2f}".format, "p10": "{:.2f}".format, "p90": "{:.2f}".format,
    })
    return (f"source A: {table.attrs['source']}\n{text}\n\nper kernel kind, B's profiled time / A's "
            f"predicted time (nodes of all of B's samples; share of B's kernel time):\n{kinds}")


def _device(target: str, agent: str | None) -> str:
    if agent or target.startswith("remote:"):
        return agent or target
    return f"{platform.node()} {platform.machine()} {platform.processor()}".strip()
