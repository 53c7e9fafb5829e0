"""Export one trial of a finished run as a deployable bundle.

The bundle is a folder holding ``model.onnx`` (the trial's file, byte-identical), ``model.json`` (the
model card: metrics, input spec, the evaluation transform, class names, checksum), ``predict.py`` (a
standalone script needing only onnxruntime, numpy and Pillow, applying that transform) and
``README.txt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
import pandas as pd

from search.core.cells import latency_label, plain
from search.core.errors import UserError
from search.core.layout import MODEL_FILE, PARAMS_FILE, FinishedRun, trial_dir, trial_name
from search.task.preprocess import SQUASH, Preprocess

#: The source of the bundle's ``predict.py``.
PREDICT_SOURCE = Path(__file__).with_name("predict_template.py")
#: Bumped when model.json changes incompatibly.
CARD_FORMAT = "edgepareto-bundle/1"


def export_trial(report: FinishedRun, trial: int, to: Path) -> Path:
    """Write trial ``trial`` of the finished run ``report`` (``load_run(path)``) as a bundle folder ``to``.

    ``to`` must not exist or be an empty folder: a bundle never overwrites anything. Everything is
    written into a temporary folder beside ``to`` and renamed at the end, so a failure leaves nothing
    half-written. Returns ``to``. Raises UserError (one line) for a missing run or one without
    results, an unknown trial, a trial without a model, and a destination in the way.
    """
    to = Path(to).resolve()  # resolved: "." has a parent to write beside
    row = _trial_row(report, trial)
    model_file = _model_file(report, row, trial)
    _check_destination(to)
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
        tmp = to.parent / f".{to.name}.{secrets.token_hex(4)}.tmp"
        tmp.mkdir()  # (not mkdtemp: the bundle gets the usual permissions, not 0700)
    except OSError as exc:
        raise UserError(f"cannot write the bundle to {to}: {exc}") from None
    try:
        shutil.copyfile(model_file, tmp / "model.onnx")
        card = model_card(report, row, tmp / "model.onnx")
        (tmp / "model.json").write_text(json.dumps(card, indent=2) + "\n")
        shutil.copyfile(PREDICT_SOURCE, tmp / "predict.py")
        (tmp / "predict.py").chmod(0o755)
        (tmp / "README.txt").write_text(_readme(card), encoding="utf-8")
        _check_destination(to)  # again: something may have appeared meanwhile
        if to.exists():
            to.rmdir()  # empty (checked): rename needs the name free on every platform
        os.rename(tmp, to)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write the bundle to {to}: {exc}") from None
        raise
    return to


def model_card(report: FinishedRun, row: pd.Series, model_file: Path) -> dict[str, Any]:
    """The content of ``model.json`` for the trial in ``row`` (a trials.csv row)."""
    summary = report.summary
    number = int(row["trial"])
    model = str(row["model"])
    front = report.pareto[report.pareto["trial"] == number]
    final = front.iloc[0] if len(front) else None
    reference = report.pareto.iloc[0]
    prep = summary.get("preprocessing", {})
    inputs, outputs = _io_specs(model_file)
    config = summary.get("config", {})
    side = inputs[0]["shape"][-1]  # the file's own size (a ``resolution`` candidate declares a smaller one)
    size = side if isinstance(side, int) else config.get("img_size") or prep["input_shape"][-1]
    transform = bundle_preprocess(prep, model, size)
    params = _technique_params(report.run_dir, number, row)
    source = final if final is not None else row
    latency = {
        "ms": plain(source.get("latency_ms")),
        "p90_ms": plain(source.get("latency_p90_ms")),
        "source": plain(source.get("latency_source")),
        "error_pct": plain(source.get("latency_error_pct")),
        "low_ms": plain(source.get("latency_low_ms")),  # a prediction's ~90% interval; None: measured
        "high_ms": plain(source.get("latency_high_ms")),
        "label": latency_label(source.get("latency_source"), source.get("latency_error_pct")),
        # the front is re-timed at the end on the final target; other trials keep the search's timing
        "when": "final re-measurement of the front" if final is not None else "during the search",
        "target": summary.get("target") if final is not None else summary.get("latency"),
    }
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "run": summary.get("run", report.run_dir.name),
        "trial": number,
        "model": model,
        "role": str(final["role"]) if final is not None else "other",
        "techniques": str(row["techniques"]),
        "technique_params": params["candidate"],
        "search_params": params["optuna"],
        "metrics": {
            "test_accuracy": plain(final["test_accuracy"]) if final is not None else None,
            "accuracy_drop_pt": plain(final["accuracy_drop_pt"]) if final is not None else None,
            "speedup": plain(final["speedup"]) if final is not None else None,
            "compression": plain(final["compression"]) if final is not None else None,
            "val_accuracy": plain(row.get("val_accuracy")),
            "latency": latency,
            "size_mb": plain(row.get("size_mb")),
            "compressed_mb": plain(row.get("compressed_mb")),
            "params": _count(row.get("params")),
            "macs": _count(row.get("macs")),
            "sparsity": plain(row.get("sparsity")),
            # the drop, speed-up and compression are relative to the run's first baseline
            "reference": {"trial": int(reference["trial"]), "model": str(reference["model"])},
            "note": "test_accuracy and the ratios exist for Pareto and baseline trials only (test split); "
            "val_accuracy is on the validation split",
        },
        "input": inputs[0],
        "output": {**outputs[0], "meaning": "class scores (logits) in the order of classes; softmax gives "
                   "probabilities"},
        "preprocessing": {
            "image_size": transform.img_size,
            "color": "RGB",
            "resize": _pillow_steps(transform),
            "scale": "pixel / 255 (to [0, 1])",
            **transform.to_dict(),
            "transform": transform.describe(),
            "layout": prep.get("layout", "NCHW float32 RGB scaled to [0, 1], then (x - mean) / std"),
            "trained_on": config.get("data"),
        },
        "classes": prep.get("classes", []),
        "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "onnxruntime": summary.get("machine", {}).get("onnxruntime"),
        "edgepareto": _version(),
    }
    if config.get("data") == "digits":
        card["preprocessing"]["note"] = (
            "trained on the embedded 8x8 digits (values / 16, upsampled by torch bilinear "
            "interpolation); image files are squashed by the Pillow resize above"
        )
    return card


def bundle_preprocess(prep: dict[str, Any], model: str, size: int) -> Preprocess:
    """The evaluation transform of ``model`` from summary.json's "preprocessing" block: its
    ``by_model`` entry, else the block itself; fields an older summary lacks are what those runs
    did (squash, bilinear). ``size`` is the model file's own input side, which a ``resolution``
    candidate makes smaller than the run's."""
    entry = prep.get("by_model", {}).get(model) or prep
    return Preprocess.from_dict({**SQUASH, "mean": prep.get("mean"), "std": prep.get("std"), **entry,
                                 "img_size": size})


def _pillow_steps(p: Preprocess) -> str:
    """The transform as Pillow calls (what predict.py does)."""
    flt = f"Image.Resampling.{p.interpolation.upper()}"
    if p.mode == "squash":
        return f"Pillow: image.convert('RGB').resize(({p.img_size}, {p.img_size}), {flt})"
    return (
        f"Pillow: image.convert('RGB').resize((w, h), {flt}) with the shorter side {p.resize_size} and "
        f"the longer one truncated (torchvision Resize({p.resize_size})), then .crop() of the centred "
        f"{p.img_size}x{p.img_size} box, offsets rounded (torchvision CenterCrop({p.img_size}))"
    )


def _trial_row(report: FinishedRun, trial: int) -> pd.Series:
    trials = report.trials
    rows = trials[trials["trial"] == trial]
    if rows.empty:
        pareto = ", ".join(str(t) for t in report.pareto["trial"])
        numbers = sorted(int(t) for t in trials["trial"])
        span = f"{numbers[0]}-{numbers[-1]}" if numbers else "none"
        raise UserError(
            f"run {report.run_dir.name} has no trial {trial} (trials {span}; Pareto and baseline: {pareto})"
        )
    return rows.iloc[0]


def _model_file(report: FinishedRun, row: pd.Series, trial: int) -> Path:
    name = report.run_dir.name
    state = str(row["state"])
    if state != "COMPLETE":
        reason = plain(row.get("fail_reason"))
        why = f": {' '.join(str(reason).split())}" if reason else ""
        raise UserError(f"trial {trial} of run {name} did not complete ({state}{why}); it has no model")
    artifact = plain(row.get("artifact")) or f"{trial_name(trial)}/{MODEL_FILE}"
    path = report.run_dir / str(artifact)
    if not path.is_file():
        raise UserError(f"trial {trial} of run {name} has no model file ({artifact} is missing)")
    return path


def _check_destination(to: Path) -> None:
    if to.exists() and not to.is_dir():
        raise UserError(f"{to} exists and is not a folder; not overwriting it")
    if to.is_dir() and any(to.iterdir()):
        raise UserError(f"{to} exists and is not empty; not overwriting it (choose a new or empty folder)")


def _io_specs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, shapes (symbolic axes by name, e.g. ``batch``) and dtypes, read from the graph."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        out = {"name": value.name, "shape": dims, "dtype": dtype}
        if len(dims) == 4:
            out["layout"] = "NCHW"
        out["dynamic_axes"] = [i for i, d in enumerate(dims) if not isinstance(d, int)]
        return out

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


def _technique_params(run_dir: Path, number: int, row: pd.Series) -> dict[str, Any]:
    """The trial's technique settings (params.json) and its raw search parameters."""
    optuna = json.loads(row["params_json"]) if isinstance(row.get("params_json"), str) else {}
    file = trial_dir(run_dir, number) / PARAMS_FILE
    if file.is_file():
        saved = json.loads(file.read_text())
        return {"candidate": saved.get("candidate", {}), "optuna": saved.get("optuna_params", optuna)}
    return {"candidate": None, "optuna": optuna}


def _count(v: Any) -> int | None:
    """A count column (params, MACs): read as float when the column has gaps."""
    v = plain(v)
    return None if v is None else int(v)


def _version() -> str:
    try:
        return metadata.version("edgepareto")
    except metadata.PackageNotFoundError:
        return "unknown"


def _readme(card: dict[str, Any]) -> str:
    m, lat = card["metrics"], card["metrics"]["latency"]
    acc = (
        f"test accuracy {m['test_accuracy']:.4f} ({m['accuracy_drop_pt']:+.2f} pt vs baseline trial "
        f"{m['reference']['trial']})"
        if m["test_accuracy"] is not None else f"validation accuracy {m['val_accuracy']:.4f}"
    )
    timing = f"latency {lat['ms']:.3f} ms ({lat['label']}, {lat['target']})" if lat["ms"] is not None else ""
    shape = " x ".join(str(d) for d in card["input"]["shape"])
    return "\n".join([
        f"edgepareto bundle: trial {card['trial']} of run {card['run']} "
        f"({card['model']}: {card['techniques']}).",
        "model.onnx: the model; model.json: its card (metrics, preprocessing, classes, sha256); "
        "predict.py: standalone inference.",
        "Run: pip install onnxruntime numpy pillow && python predict.py photo.jpg [--top 3] [--json]",
        f"Input {card['input']['name']}: {card['input']['dtype']} {shape} "
        f"({card['input'].get('layout', '')}), see model.json 'preprocessing'.",
        f"Preprocessing (predict.py applies it): {card['preprocessing']['transform']}.",
        f"{acc}; {timing}; {m['size_mb']:.3f} MB.",
        "",
    ])
