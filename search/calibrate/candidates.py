"""Diverse compressed candidates for latency calibration, without any training.

Latency depends on a graph's shapes and ops, not on its weights, so candidates are sampled from each
model's search space (Optuna's random sampler) and built from untrained weights. Distillation only
changes weights, so it is left out: no candidate trains. What remains spans the families the search
varies: pruned, low-rank, token-merged, sparse, fp32, fp16, and dynamic and static int8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from search.candidate.build import build
from search.candidate.evaluate import input_shape
from search.task import models
from search.task.baseline import Task
from search.task.data import load_dataset, model_preprocess
from search.task.families import resolve_space
from spaces import Candidate, Context, Space
from spaces.vit import is_vit
from targets.slot import checkpoint as slot_checkpoint

#: Techniques that change weights only, never the graph a device runs.
WEIGHTS_ONLY = ("distill",)
#: Training images given to techniques that read data (Taylor importance, static calibration).
CONTEXT_IMAGES = 256


@dataclass(frozen=True)
class CandidateFile:
    """One built candidate: its ONNX file, base model, label and input shape."""

    path: Path
    model: str
    techniques: str
    input_shape: tuple[int, ...]


def untrained_task(
    model: str, img_size: int, seed: int = 0, context_images: int | None = None
) -> tuple[Task, Context]:
    """An untrained base model on the digits data, and the context techniques read data from
    (its first ``context_images`` training images; None: all of them)."""
    prep = model_preprocess(model, img_size, "digits")
    data = load_dataset("digits", img_size, prep.mean, prep.std, seed, 0.2, 0.2, preprocess=prep)
    torch.manual_seed(seed)
    base = models.create(model, data.num_classes, img_size).eval()
    task = Task(base, data, img_size, prep.mean, prep.std, model, preprocess=prep)
    train = data.train if context_images is None else data.train.subset(context_images)
    ctx = Context(train=train, teacher=base, seed=seed, checkpoint=slot_checkpoint)
    return task, ctx


def sample_candidates(
    model_names: Sequence[str], img_size: int, count: int, out_dir: Path, seed: int = 0,
    space: str = "auto", log: Callable[[str], None] = lambda _m: None,
) -> Iterator[CandidateFile]:
    """Yield ``count`` candidates, the models taken in turn; the first of each model is its
    uncompressed baseline. A candidate that fails to build is skipped (and logged)."""
    setups = {}
    for name in model_names:
        task, ctx = untrained_task(name, img_size, seed, CONTEXT_IMAGES)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed * 1000 + len(setups)))
        setups[name] = (task, ctx, Space.load(resolve_space(space, name, is_vit(task.base))), study)
    made, attempt = 0, 0
    while made < count:
        name = model_names[attempt % len(model_names)]
        task, ctx, space_, study = setups[name]
        first = attempt < len(model_names)
        attempt += 1
        if attempt > 3 * count + len(model_names):
            raise RuntimeError(f"only {made} of {count} candidates could be built")
        trial = study.ask()
        candidate = space_.sample(trial, baseline=first)
        candidate = Candidate(tuple(s for s in candidate.steps if s.technique not in WEIGHTS_ONLY))
        out = out_dir / f"{made:04d}"
        out.mkdir(parents=True, exist_ok=True)
        try:
            path, _ = build(candidate, task, out, ctx, lambda *_stage: None)
        except Exception as exc:  # a candidate the search would record as FAIL: not a sample
            log(f"skipped {name} {candidate.label()}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        made += 1
        yield CandidateFile(path, name, candidate.label() or "baseline", input_shape(path, task.input_shape))
