"""Post-training quantization of the exported ONNX file with ``onnxruntime.quantization``.

Three strategies, chosen by ``mode``: dynamic int8, static int8 in QDQ format calibrated on training
images, and fp16. QOperator format is never used: it is several times slower on x86 (see README).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
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
from spaces.params import CategoricalParam

CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
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
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
        quantize_static(
            str(_preprocessed(src, dst)), str(dst), _Images(_input_name(src), images),
            quant_format=QuantFormat.QDQ,
            per_channel=bool(cfg["per_channel"]),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATIONS[cfg["calibration"]],
            op_types_to_quantize=OP_TYPES[cfg.get("ops", "all")],
        )


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
    )
    recipe = {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all"}

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        parts = {"dynamic": "int8-dyn", "static": "int8-qdq", "fp16": "fp16"}[cfg["mode"]]
        if cfg.get("per_channel"):
            parts += " per-ch"
        if "calibration" in cfg:
            parts += f" {cfg['calibration']}"
        if cfg.get("ops", "all") != "all":
            parts += f" {cfg['ops']}-only"
        return parts

    def apply(self, src: Path, dst: Path, cfg: Mapping[str, Any], ctx: Context) -> None:
        STRATEGIES[cfg["mode"]](src, dst, cfg, ctx)
