"""Training and distillation loops (CPU or CUDA), and the knowledge-distillation loss.

On CUDA, training runs under autocast (bf16 where the GPU supports it, else fp16 with a gradient
scaler) in channels_last, with batches copied from pinned memory while the GPU works; BatchNorm
recalibration, the teacher's passes and predictions run on the GPU too. Models leave every function
on the CPU in the default memory format, ready for export.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from spaces.data import Split


def no_checkpoint() -> None:
    """The default checkpoint hook: nothing waits."""


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(dev: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``dev``: bf16 where the GPU supports it, else fp16; None on the CPU
    (fp32: CPU autocast would change what the exported fp32 model computes)."""
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def on_device(model: nn.Module) -> Iterator[torch.device]:
    """``model`` on the training device (channels_last on CUDA) for the block, then back on the CPU
    in the default memory format."""
    dev = device()
    if dev.type == "cuda":
        model.to(dev, memory_format=torch.channels_last)
    try:
        yield dev
    finally:
        if dev.type == "cuda":
            model.to("cpu", memory_format=torch.contiguous_format)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al.: ``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)``; the CE term
    with ``label_smoothing`` (Szegedy et al.)."""
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0:
        return ce
    kd = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    return (1 - alpha) * ce + alpha * kd


def student_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The loss for a plain classifier, or for a distilled DeiT's ``(cls, dist)`` head pair.

    DeiT (Touvron et al., 2021): the class head learns the labels and the distillation head the
    teacher, ``(1 - alpha) * CE(cls) + alpha * T^2 * KL(teacher_T || dist_T)``. Without a teacher
    both heads learn the labels.
    """
    if not isinstance(outputs, tuple):
        return distillation_loss(outputs, teacher_logits, targets, temperature, alpha, label_smoothing)
    cls_logits, dist_logits = outputs
    ce = F.cross_entropy(cls_logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0:
        return (ce + F.cross_entropy(dist_logits, targets, label_smoothing=label_smoothing)) / 2
    kd = distillation_loss(dist_logits, teacher_logits, targets, temperature, alpha=1.0)
    return (1 - alpha) * ce + alpha * kd


def fit(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.0,
    warmup: float = 0.3,
    label_smoothing: float = 0.0,
    on_epoch: Callable[[int, float, float], None] | None = None,
    checkpoint: Callable[[], None] = no_checkpoint,
) -> nn.Module:
    """AdamW with a one-cycle schedule (the rate rises over the first ``warmup`` share of the steps,
    then anneals) on ``data``'s augmented batches, cross-entropy with ``label_smoothing``; distils
    from ``teacher`` when ``alpha > 0``.

    Models with a distillation head (timm's distilled DeiT) train both heads (``student_loss``)
    and average them at inference, as timm does in eval mode. ``checkpoint`` is called before every
    batch (the search passes its device slot's, so a parallel trial's measurement waits one batch).
    ``on_epoch(epoch, mean loss, images per second)`` follows each epoch.
    """
    two_heads = hasattr(model, "set_distilled_training")
    if two_heads:
        model.set_distilled_training(True)
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=warmup
    )
    with on_device(model) as dev, on_device(teacher) if teacher is not None else contextlib.nullcontext():
        dtype = amp_dtype(dev)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
        if teacher is not None:
            teacher.eval()
        for epoch in range(epochs):
            model.train()
            total, seen, start = torch.zeros((), device=dev), 0, time.monotonic()
            for xb, yb in data.batches(batch_size, shuffle_seed=seed * 1000 + epoch, augment=True):
                checkpoint()
                if len(yb) < 2:  # BatchNorm cannot train on one image (a short last batch, skips)
                    continue
                xb = xb.to(dev, non_blocking=True)
                yb = yb.to(dev, non_blocking=True)
                if dev.type == "cuda":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    outputs = model(xb)
                    teacher_logits = None
                    if teacher is not None and alpha > 0:
                        with torch.no_grad():
                            teacher_logits = teacher(xb)
                    loss = student_loss(
                        _float(outputs), _float(teacher_logits), yb, temperature, alpha, label_smoothing
                    )
                if dev.type == "cpu" and not torch.isfinite(loss):  # on CUDA: checked per epoch, no sync
                    raise FloatingPointError(f"training loss became {loss.item()} in epoch {epoch + 1}")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if sched.last_epoch < sched.total_steps:  # skipped batches leave steps over
                    sched.step()
                total += loss.detach() * len(yb)
                seen += len(yb)
            mean = total.item() / max(seen, 1)  # the epoch's one host-device sync
            if not math.isfinite(mean):
                raise FloatingPointError(f"training loss became {mean} in epoch {epoch + 1}")
            if on_epoch is not None:
                on_epoch(epoch + 1, mean, seen / max(time.monotonic() - start, 1e-9))
    if two_heads:
        model.set_distilled_training(False)
    return model.eval()


def _float(t: torch.Tensor | tuple[torch.Tensor, ...] | None):
    """Logits in fp32 for the loss (autocast may have made them bf16 or fp16)."""
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(x.float() for x in t)
    return t.float()


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of the torch model on ``data`` (the images it could read)."""
    model.eval()
    correct = seen = 0
    with on_device(model) as dev:
        for x, y in data.batches(batch_size):
            correct += int((model(x.to(dev, non_blocking=True)).argmax(1).cpu() == y).sum())
            seen += len(y)
    return correct / max(seen, 1)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: Split, limit: int | None = None, batch_size: int = 128,
    checkpoint: Callable[[], None] = no_checkpoint,
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``data``'s first ``limit`` images (exact
    averages, weights untouched), on the training device.

    Structural changes shift every layer's activation statistics; with stale BN statistics a
    ResNet-18 pruned by 30% falls to chance accuracy, and recalibration alone restores it
    (see README). No-op for models without BatchNorm.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.train()
    with on_device(model) as dev:
        for x, _ in data.batches(batch_size, limit=limit):
            checkpoint()
            model(x.to(dev, non_blocking=True))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
