"""Training and distillation loops (CPU or CUDA), and the knowledge-distillation loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def no_checkpoint() -> None:
    """The default checkpoint hook: nothing waits."""

def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.: ``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)``."""
    ce = F.cross_entropy(student_logits, targets)
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
) -> torch.Tensor:
    """The loss for a plain classifier, or for a distilled DeiT's ``(cls, dist)`` head pair.

    DeiT (Touvron et al., 2021): the class head learns the labels and the distillation head the
    teacher, ``(1 - alpha) * CE(cls) + alpha * T^2 * KL(teacher_T || dist_T)``. Without a teacher
    both heads learn the labels.
    """
    if not isinstance(outputs, tuple):
        return distillation_loss(outputs, teacher_logits, targets, temperature, alpha)
    cls_logits, dist_logits = outputs
    if teacher_logits is None or alpha == 0:
        return (F.cross_entropy(cls_logits, targets) + F.cross_entropy(dist_logits, targets)) / 2
    kd = distillation_loss(dist_logits, teacher_logits, targets, temperature, alpha=1.0)
    return (1 - alpha) * F.cross_entropy(cls_logits, targets) + alpha * kd


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.0,
    on_epoch: Callable[[int, float], None] | None = None,
    checkpoint: Callable[[], None] = no_checkpoint,
) -> nn.Module:
    """AdamW with a one-cycle schedule; distils from ``teacher`` when ``alpha > 0``.

    Models with a distillation head (timm's distilled DeiT) train both heads (``student_loss``)
    and average them at inference, as timm does in eval mode. ``checkpoint`` is called before every
    batch (the search passes its device slot's, so a parallel trial's measurement waits one batch).
    """
    dev = device()
    model.to(dev)
    two_heads = hasattr(model, "set_distilled_training")
    if two_heads:
        model.set_distilled_training(True)
    if teacher is not None:
        teacher.to(dev).eval()
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch)
    )
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), batch_size):
            checkpoint()
            idx = order[i : i + batch_size]
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            outputs = model(xb)
            teacher_logits = None
            if teacher is not None and alpha > 0:
                with torch.no_grad():
                    teacher_logits = teacher(xb)
            loss = student_loss(outputs, teacher_logits, yb, temperature, alpha)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch + 1, total / len(x))
    if two_heads:
        model.set_distilled_training(False)
    model.to("cpu").eval()
    if teacher is not None:
        teacher.to("cpu")
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, x: torch.Tensor, batch_size: int = 128, checkpoint: Callable[[], None] = no_checkpoint,
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``x`` (exact averages, weights untouched).

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
    for i in range(0, len(x), batch_size):
        checkpoint()
        model(x[i : i + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
