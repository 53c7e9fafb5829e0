"""Quantization-aware fine-tuning (``qat``) for CNNs: PyTorch's FX QAT flow, exported as QDQ int8.

The step folds each BatchNorm into its convolution (``torch.fx.experimental.optimization.fuse``; the
statistics were just re-estimated), then ``prepare_qat_fx`` inserts PyTorch's ``FakeQuantize``
modules: int8 weights (symmetric, per output channel or per tensor) and uint8 activations (moving
min/max, calibrated here on training images). The recovery fine-tuning that follows (``distill``)
trains through the fake quantization, so the weights learn to live on the int8 grid. On export the
fake quantizers become ``QuantizeLinear``/``DequantizeLinear`` pairs; ``fold_weight_quantizers``
stores the weights as int8 initializers, and onnxruntime fuses the pairs into its int8 kernels, the
same QDQ format as post-training static quantization (``quantize``).

``lr_scale``: the fine-tuning that follows runs at this share of the recovery rate (``adapt``). On the
digits' ResNet-18, one epoch at the full rate (2e-3) through the fake quantizers fell from 99.2% to
79.2% validation accuracy; at a tenth it kept 98.6% (calibration alone: 99.2%).

``activations``: ``full`` uses the whole uint8 range (Arm, and x86 with VNNI); ``reduced`` keeps
activations to 7 bits, onnxruntime's advice for x86 without VNNI, whose u8s8 multiply-add can saturate.

It replaces ``quantize`` (the file is already int8) and does not follow ``sparsity`` (folding the
BatchNorms rebuilds the convolutions without their masks): ``Technique.excludes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from spaces.base import TECHNIQUES, Context, TorchTechnique
from spaces.params import CategoricalParam, FloatParam
from spaces.resolution import patch_size

#: Training images that calibrate the activation ranges before any fine-tuning.
CALIBRATION_IMAGES = 128
#: uint8 activation range per ``activations`` setting.
ACTIVATION_RANGE = {"full": (0, 255), "reduced": (0, 127)}


def qconfig(per_channel: bool, activations: str) -> Any:
    """PyTorch's ``QConfig``: non-fused ``FakeQuantize`` (its ops export to ONNX), moving min/max."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
    )

    low, high = ACTIVATION_RANGE[activations]
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=low, quant_max=high, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    if per_channel:
        weight = FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
        )
    else:
        weight = FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
            qscheme=torch.per_tensor_symmetric,
        )
    return QConfig(activation=activation, weight=weight)


def fold_weight_quantizers(path: Path) -> None:
    """Rewrite the file in place: per-tensor scales and zero points that PyTorch exports as shape
    ``(1,)`` become scalars (as ONNX's per-tensor quantization and onnxruntime's int8 fusions
    require); each ``QuantizeLinear`` of a constant (a weight) becomes its int8 initializer; nodes
    and initializers nothing uses are dropped. The numbers are unchanged (``DequantizeLinear`` reads
    the same integers); the file stores 1 byte per weight, not 4."""
    model = onnx.load(str(path))
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    alias = {
        n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in constants
    }

    def constant(name: str) -> np.ndarray | None:
        source = constants.get(alias.get(name, name))
        return None if source is None else numpy_helper.to_array(source)

    scalars: dict[str, str] = {}  # a per-tensor scale or zero point, stored as shape (1,): made a scalar
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for k in (1, 2):
                value = constant(node.input[k]) if len(node.input) > k else None
                if value is not None and value.shape == (1,):
                    name = scalars.setdefault(node.input[k], f"{node.input[k]}__scalar")
                    constants[name] = numpy_helper.from_array(value.reshape(()), name)
                    node.input[k] = name
    graph.initializer.extend(constants[name] for name in scalars.values())
    nodes, folded = [], []
    for node in graph.node:
        values = [constant(n) for n in node.input] if node.op_type == "QuantizeLinear" else [None]
        if node.op_type == "QuantizeLinear" and len(values) == 3 and all(v is not None for v in values):
            w, scale, zero = values
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * w.ndim
            if scale.ndim:
                shape[axis] = -1
            info = np.iinfo(zero.dtype)
            q = np.rint(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64)
            q = np.clip(q, info.min, info.max).astype(zero.dtype)
            folded.append(numpy_helper.from_array(q, node.output[0]))
            continue
        nodes.append(node)
    graph.initializer.extend(folded)
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(nodes):  # dead-node elimination, outputs first
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    kept = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))


@TECHNIQUES.register("qat")
class Qat(TorchTechnique):
    """Fake int8 quantization inserted for the recovery fine-tuning; an int8 QDQ file."""

    order = 35  # after the structural steps, before the fine-tuning that trains through it
    params = (
        CategoricalParam("per_channel", (True, False)),
        CategoricalParam("activations", ("full", "reduced")),
        FloatParam("lr_scale", 0.03, 1.0, log=True),
    )
    recipe = {"per_channel": True, "activations": "full", "lr_scale": 0.1}
    needs_recovery = True
    excludes: ClassVar[tuple[str, ...]] = ("quantize", "sparsity")
    stage = "quantize"

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return patch_size(model) is None  # CNNs: ViTs keep onnxruntime's post-training quantization

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        weights = "per-channel" if cfg["per_channel"] else "per-tensor"
        return f"{weights}, {cfg['activations']} u8, lr x{cfg['lr_scale']:.2g}"

    def adapt(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> Context:
        """The fine-tuning after it runs at ``lr_scale`` of the recovery rate: through fake
        quantization, without BatchNorm, the full rate undoes the int8 grid's fit."""
        return replace(ctx, lr=ctx.lr * float(cfg["lr_scale"]))

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        from torch.ao.quantization import QConfigMapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx
        from torch.fx.experimental.optimization import fuse

        example = ctx.example_input
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folded = fuse(model.eval())  # BatchNorm folded into the convolutions (eval statistics)
            folded.train()
            mapping = QConfigMapping().set_global(qconfig(bool(cfg["per_channel"]), str(cfg["activations"])))
            prepared = prepare_qat_fx(folded, mapping, example_inputs=(example,))
        with torch.no_grad():  # the activation ranges, before any fine-tuning
            for x, _ in ctx.train.batches(ctx.batch_size, limit=CALIBRATION_IMAGES):
                ctx.checkpoint()
                prepared(x)
        return prepared.eval()

    def finalize(self, model: nn.Module) -> nn.Module:
        """The ranges frozen (observers off): export writes them as the QDQ scales."""
        from torch.ao.quantization import disable_observer

        model.apply(disable_observer)
        return model.eval()

    def exported(self, path: Path) -> None:
        fold_weight_quantizers(path)
