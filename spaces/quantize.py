"""Post-training quantization of the exported ONNX file with ``onnxruntime.quantization``.

Three strategies, chosen by ``mode``: dynamic int8, static int8 in QDQ format calibrated on training
images, and fp16. QOperator format is never used: it is several times slower on x86 (see README).

Mixed precision (``keep_float``, static only): the share of the weighted layers most sensitive to
quantization stays in float (onnxruntime's ``nodes_to_exclude``). A layer's sensitivity is how much
the output error falls when it alone is kept float in the otherwise int8 graph: the logits' squared
error relative to the float model's, on calibration images (NNCF's accuracy control reverts layers
by a similar ranking, in a fixed loop; here the share is a searched knob).
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16

from spaces.base import TECHNIQUES, Context, OnnxTechnique
from spaces.params import CategoricalParam, FloatParam

CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
#: Calibration images on which the layers' sensitivity is scored (the ranked graphs are calibrated on
#: all ``CALIBRATION_IMAGES``, like the final file).
SENSITIVITY_IMAGES = 32
#: The layers ``keep_float`` ranks: the ones with weights.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CALIBRATIONS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class _Images(CalibrationDataReader):
    """Feeds training images, in batches, to the calibrator."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)
        )
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def _input_name(path: Path) -> str:
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def _preprocessed(src: Path, dst: Path) -> Path:
    """Shape inference and graph optimisation, as onnxruntime recommends before quantizing."""
    out = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


#: ``ops``: which op types are quantized. ``matmul`` keeps convolutions (a ViT's patch embedding,
#: a CNN's every layer), normalisation and softmax in float: the usual choice for transformers.
OP_TYPES: dict[str, list[str] | None] = {"all": None, "matmul": ["MatMul", "Gemm"]}


def _dynamic(src: Path, dst: Path, cfg: Mapping[str, Any], ctx: Context) -> None:
    quantize_dynamic(
        str(_preprocessed(src, dst)), str(dst),
        per_channel=bool(cfg["per_channel"]), weight_type=QuantType.QInt8,
        op_types_to_quantize=OP_TYPES[cfg.get("ops", "all")],
    )


def _static(src: Path, dst: Path, cfg: Mapping[str, Any], ctx: Context) -> None:
    images = ctx.train.images(CALIBRATION_IMAGES).numpy().astype(np.float32)
    pre = _preprocessed(src, dst)
    share = float(cfg.get("keep_float", 0.0))
    exclude: list[str] = []
    if share >= 1.0:  # everything float: the identity
        exclude = [n.name for n in onnx.load(str(pre)).graph.node]
    elif share > 0:
        ranked = sensitivity_ranking(pre, images[:SENSITIVITY_IMAGES], cfg, calibration=images)
        exclude = ranked[: math.ceil(share * len(ranked) - 1e-9)]
    _quantize_static(pre, dst, images, cfg, nodes_to_exclude=exclude)


def _quantize_static(
    src: Path, dst: Path, images: np.ndarray, cfg: Mapping[str, Any], **nodes: list[str]
) -> None:
    """onnxruntime's static QDQ quantization of ``src`` with ``cfg``'s settings; ``nodes`` passes
    ``nodes_to_exclude`` or ``nodes_to_quantize``."""
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
        quantize_static(
            str(src), str(dst), _Images(_input_name(src), images),
            quant_format=QuantFormat.QDQ,
            per_channel=bool(cfg["per_channel"]),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATIONS[cfg["calibration"]],
            op_types_to_quantize=OP_TYPES[cfg.get("ops", "all")],
            **nodes,
        )


def _logits(path: Path, images: np.ndarray) -> np.ndarray:
    """The model's outputs on ``images`` (one onnxruntime CPU thread: the same numbers every run)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def layer_sensitivity(
    src: Path, images: np.ndarray, cfg: Mapping[str, Any], calibration: np.ndarray | None = None,
) -> dict[str, float]:
    """Each weighted layer of ``src`` (``WEIGHTED_OPS`` among the op types ``cfg`` quantizes; named
    nodes only) -> how much the logits' squared error (relative to the float model's energy, on
    ``images``) falls when that layer alone stays float and every other is quantized with ``cfg``'s
    static settings, calibrated on ``calibration`` (default ``images``: the final file's calibration
    images, so that the ranked graphs are the final one's). Negative where keeping it float makes the
    graph worse.

    Measured in the quantized graph rather than by quantizing each layer alone: a float layer among
    int8 ones changes where the graph requantizes, and on a ResNet the layers that erred most when
    quantized alone, kept float, left the output further from the float model's than plain int8."""
    allowed = OP_TYPES[cfg.get("ops", "all")]
    layers = [
        n.name for n in onnx.load(str(src)).graph.node
        if n.name and n.op_type in WEIGHTED_OPS and (allowed is None or n.op_type in allowed)
    ]
    reference = _logits(src, images)
    energy = float(np.mean(reference**2)) or 1.0

    def error(path: Path) -> float:
        return float(np.mean((_logits(path, images) - reference) ** 2)) / energy

    calibration = images if calibration is None else calibration
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sensitivity-") as tmp:
        every = Path(tmp) / "int8.onnx"
        _quantize_static(src, every, calibration, cfg)
        int8_error = error(every)
        for i, name in enumerate(layers):
            one = Path(tmp) / f"{i}.onnx"
            _quantize_static(src, one, calibration, cfg, nodes_to_exclude=[name])
            out[name] = int8_error - error(one)
    return out


def sensitivity_ranking(
    src: Path, images: np.ndarray, cfg: Mapping[str, Any], calibration: np.ndarray | None = None,
) -> list[str]:
    """The weighted layers, most sensitive first (``layer_sensitivity``; ties by graph order)."""
    errors = layer_sensitivity(src, images, cfg, calibration)
    return sorted(errors, key=lambda name: -errors[name])


def _fp16(src: Path, dst: Path, cfg: Mapping[str, Any], ctx: Context) -> None:
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


STRATEGIES: dict[str, Callable[[Path, Path, Mapping[str, Any], Context], None]] = {
    "dynamic": _dynamic,
    "static": _static,
    "fp16": _fp16,
}


@TECHNIQUES.register("quantize")
class Quantize(OnnxTechnique):
    """int8 (dynamic, or static QDQ with calibration) or fp16 weights and activations."""

    order = 60
    params = (
        CategoricalParam("mode", tuple(STRATEGIES)),
        CategoricalParam("per_channel", (False, True), when=("mode", ("dynamic", "static"))),
        CategoricalParam("calibration", tuple(CALIBRATIONS), when=("mode", ("static",))),
        CategoricalParam("ops", tuple(OP_TYPES), when=("mode", ("dynamic", "static"))),
        FloatParam("keep_float", 0.0, 1.0, step=0.05, when=("mode", ("static",))),
    )
    recipe = {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all", "keep_float": 0.0}

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        parts = {"dynamic": "int8-dyn", "static": "int8-qdq", "fp16": "fp16"}[cfg["mode"]]
        if cfg.get("per_channel"):
            parts += " per-ch"
        if "calibration" in cfg:
            parts += f" {cfg['calibration']}"
        if cfg.get("ops", "all") != "all":
            parts += f" {cfg['ops']}-only"
        if cfg.get("keep_float", 0.0) > 0:
            parts += f" {cfg['keep_float']:.0%} float"
        return parts

    def apply(self, src: Path, dst: Path, cfg: Mapping[str, Any], ctx: Context) -> None:
        STRATEGIES[cfg["mode"]](src, dst, cfg, ctx)
