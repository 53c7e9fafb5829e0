"""``edgepareto bench scale``: does a streamed ImageFolder search scale with the number of images?

For each data set size N: a synthetic ImageFolder of N JPEGs (scikit-learn's digits, upsampled to
S x S, coloured, with seeded noise; cached under ``runs/.cache/bench-scale`` and reused), one timed
in-process pass over its train split (``load_dataset(...).train.batches``, the search's workers and
training transform), then a short ``edgepareto search`` in a subprocess (recovery fine-tuning fixed
to one epoch) while a sampler reads the memory of the search and every process below it and, on CUDA,
the GPU's busy share. Memory is the proportional set size (PSS) of anonymous memory (the DataLoader
workers share pages with the search: PSS counts a shared page once, RSS in every process), the
search's files (libraries) once, and the shared memory that carries batches from the workers
(``tree_mb``); the search process's own peak RSS beside it. Reported per N: peak memory, images per
second read, trained and evaluated, each stage's share of the trials' time, wall time; then how peak
memory grew from the smallest N to the largest (the goal: at most 1.3x, where an in-memory data set
grows N-fold).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search.bench.procs import parents
from search.config.bounds import dataset_bytes
from search.core.atomic import write_json, write_text, write_with
from search.core.errors import UserError
from search.core.stages import STAGES
from search.front.trials import stage_seconds, stage_shares

#: Recovery fine-tuning epochs of every trial (the space fixes them).
FINETUNE_EPOCHS = 1
#: The searched space: pruning, then always one epoch of recovery fine-tuning; quantization searched.
SPACE = (
    "# edgepareto bench scale: every trial fine-tunes one epoch\n"
    "name: bench-scale\n"
    "techniques:\n"
    "  prune: {ratio: [0.2, 0.6]}\n"
    f"  distill: {{enabled: always, epochs: {FINETUNE_EPOCHS}}}\n"
    "  quantize: {mode: [dynamic]}\n"
)
CACHE = ".cache/bench-scale"
DONE_FILE = "done.json"
SAMPLE_S = 0.2
BATCH = 64  # the search's default --batch-size
MB = 2**20
#: Peak memory at the largest N over that at the smallest should stay at or below this.
GOAL_RATIO = 1.3
#: The fewest images: 10 classes of ``search.task.data.min_per_class(0.2, 0.2)`` (5) each.
MIN_IMAGES = 50
#: A baseline epoch's progress line (``search.task.baseline.cached_baseline``).
BASELINE_EPOCH = re.compile(r"baseline: \S+ epoch \d+/\d+ loss \S+ \(([\d,.]+) images/s\)")


@dataclass(frozen=True)
class ScalePoint:
    """One data set size's measurements (rates in images per second; None: nothing to measure)."""

    images: int
    img_size: int
    train_images: int
    val_images: int
    peak_mb: float  # the search's process tree, its DataLoader workers included (``tree_mb``)
    search_rss_mb: float  # the search process's own peak RSS (where a data set in memory would be)
    processes: int  # the most processes the tree had at once (the search and its workers)
    in_memory_mb: float  # what loading the data set as float tensors took (``dataset_bytes``: 3 copies)
    load_rate: float | None  # one pass over the train split, training transform, no model
    train_rate: float | None  # recovery fine-tuning, over the trials that fine-tuned
    baseline_rate: float | None  # the baseline's own training epochs, from its progress lines
    eval_rate: float | None  # onnxruntime accuracy on the validation split, over the trials
    gpu_busy: float | None  # mean GPU utilisation while the search ran (0-1); None: no GPU or no NVML
    wall_s: float  # the search subprocess, start to exit
    shares: tuple[tuple[str, float], ...]  # (stage, share of the trials' summed stage seconds)
    run_dir: str


# ---------------------------------------------------------------- pure maths


def rate(images: float, seconds: float) -> float | None:
    """Images per second; None when no time was measured (``seconds`` 0, negative or not finite)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return images / seconds


def per_trial_rate(images: int, seconds: Sequence[float], passes: int = 1) -> float | None:
    """``images`` x ``passes`` per trial that spent time (seconds > 0) over their summed seconds:
    e.g. train images x fine-tune epochs / train_s, or val images / accuracy_s. Trials that skipped
    the stage (0, NaN: a duplicate, the baseline's fine-tuning) do not count."""
    spent = [float(s) for s in seconds if math.isfinite(float(s)) and float(s) > 0]
    return rate(images * passes * len(spent), sum(spent))


def memory_ratio(small_mb: float, large_mb: float) -> float:
    """Peak memory at the large N over the small N (inf when the small one is 0)."""
    return large_mb / small_mb if small_mb > 0 else math.inf


def baseline_rates(log: str) -> list[float]:
    """Images per second of each baseline training epoch in a search's progress lines."""
    return [float(m.replace(",", "")) for m in BASELINE_EPOCH.findall(log)]


def descendants(parents: Mapping[int, int], root: int) -> set[int]:
    """``root`` and every process below it, from a pid -> parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    return tree


def parse_images(items: Sequence[str]) -> tuple[int, ...]:
    """``("2000", "20000")`` as sizes, each at least ``MIN_IMAGES``."""
    try:
        sizes = tuple(int(s) for s in items)
    except ValueError:
        raise UserError(f"--images takes a comma list of whole numbers, got {','.join(items)}") from None
    if not sizes or min(sizes) < MIN_IMAGES:
        raise UserError(
            f"--images: each size must be {MIN_IMAGES} or more (10 classes, each split into train, val "
            f"and test), got {','.join(items)}"
        )
    return sizes


# ---------------------------------------------------------------- the synthetic data


def write_digits(root: Path, images: int, img_size: int, seed: int = 0) -> Path:
    """``root/<digit>/<i>.jpg``: ``images`` JPEGs (quality 90) of ``img_size`` px, class ``i % 10``
    for image ``i``, each a random digit of that class upsampled, coloured (seeded foreground and
    background) and with seeded Gaussian noise. A finished folder (its ``done.json`` names the same
    settings) is reused as it is; the folder is written beside ``root`` and then moved into place."""
    settings = {"images": images, "img_size": img_size, "seed": seed}
    done = root / DONE_FILE
    if done.is_file() and json.loads(done.read_text()) == settings:
        return root
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    by_class = [np.flatnonzero(digits.target == c) for c in range(10)]
    rng = np.random.default_rng(seed)
    tmp = root.with_name(f".{root.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in range(10):
        (tmp / str(c)).mkdir(parents=True)
    for i in range(images):
        label = i % 10
        gray = Image.fromarray((digits.images[rng.choice(by_class[label])] * (255 / 16)).astype(np.uint8))
        g = np.asarray(gray.resize((img_size, img_size), Image.BILINEAR), dtype=np.float32)[..., None] / 255
        fg, bg = rng.uniform(0.5, 1.0, 3), rng.uniform(0.0, 0.4, 3)
        rgb = bg + (fg - bg) * g + rng.normal(0.0, 0.08, (img_size, img_size, 3))
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(
            tmp / str(label) / f"{i:06d}.jpg", quality=90
        )
    write_json(tmp / DONE_FILE, settings)
    shutil.rmtree(root, ignore_errors=True)  # an unfinished or different folder of the same name
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # another bench finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def data_folder(runs_dir: Path, images: int, img_size: int, seed: int = 0) -> Path:
    """The cached synthetic folder of these settings under ``runs_dir`` (written when missing)."""
    return write_digits(runs_dir / CACHE / f"n{images}-s{img_size}-seed{seed}", images, img_size, seed)


# ---------------------------------------------------------------- measuring a process tree


@dataclass(frozen=True)
class Usage:
    """One process's memory in KiB: the PSS of its anonymous pages and of shared memory
    (``/proc/PID/smaps_rollup``), and its resident file pages counted in full (``RssFile``)."""

    anon: int = 0
    shmem: int = 0
    rss_file: int = 0


def usage(pid: int) -> Usage:
    """The process's ``Usage`` now (all 0 when it is gone; anon = the whole PSS on a kernel without
    the PSS breakdown)."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text() + Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return Usage()
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Pss_Anon", "Pss_Shmem", "RssFile") and rest.split():
            found[key] = int(rest.split()[0])
    if "Pss_Anon" not in found:
        return Usage(anon=found.get("Pss", 0))
    return Usage(found["Pss_Anon"], found.get("Pss_Shmem", 0), found.get("RssFile", 0))


def shm_held(pid: int) -> dict[tuple[int, int], int]:
    """Shared-memory files the process holds open ((device, inode) -> bytes allocated): what torch
    passes DataLoader batches in (``/dev/shm/torch_*``, unlinked, one descriptor per tensor)."""
    out: dict[tuple[int, int], int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        link = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(link)
            if target.startswith(("/dev/shm/", "/memfd:")):
                st = os.stat(link)
                out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        except OSError:
            continue
    return out


def tree_mb(root: Usage, others: Sequence[Usage], held: Mapping[tuple[int, int], int]) -> float:
    """Memory of a process tree in MB. Anonymous pages by their PSS: the workers a process forks share
    its pages, and PSS counts a shared page once over all of them (RSS would count it in each). Files
    (libraries) as the root process maps them, in full: their PSS would be split with every unrelated
    process on the machine that maps the same libraries, so the number would depend on what else
    runs. Shared memory once, as the larger of two lower bounds: what the processes mapped and touched
    (``Pss_Shmem``), and the shared-memory files they hold open (a batch a worker wrote that the main
    process has not read yet is in neither's PSS, but is held open)."""
    every = [root, *others]
    anon = sum(u.anon for u in every)
    shared = max(sum(u.shmem for u in every) * 1024, sum(held.values()))
    return ((anon + root.rss_file) * 1024 + shared) / MB


def tree_memory_mb(root: int, pids: set[int] | frozenset[int]) -> float:
    """``tree_mb`` of process ``root`` and the others of ``pids``, read now."""
    held: dict[tuple[int, int], int] = {}
    for pid in pids:
        held.update(shm_held(pid))
    return tree_mb(usage(root), [usage(pid) for pid in pids - {root}], held)


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set size so far (``VmHWM``) in KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_of(root: int) -> set[int]:
    """``root`` and all its descendants now."""
    return descendants(parents(), root)


def _gpu_reader() -> Callable[[], float | None] | None:
    """A function returning the GPU's utilisation (0-100) now, or None without CUDA or NVML:
    ``torch.cuda.utilization`` (needs pynvml), else ``nvidia-smi``."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        torch.cuda.utilization(0)
        return lambda: float(torch.cuda.utilization(0))
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--id=0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

    def read() -> float | None:
        try:
            return float(subprocess.run(query, capture_output=True, text=True, timeout=2).stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None

    return read if read() is not None else None


class TreeSampler(threading.Thread):
    """Every ``interval`` s until stopped: the memory of a process tree (``tree_memory_mb``, peak
    kept), the root's own peak RSS (``VmHWM``: exact, not sampled), the tree's size in processes (most
    kept) and the GPU's utilisation (mean kept)."""

    def __init__(self, root: int, interval: float = SAMPLE_S, gpu: Callable[[], float | None] | None = None):
        super().__init__(daemon=True)
        self.root, self.interval, self.gpu = root, interval, gpu
        self.peak_mb, self.root_peak_mb, self.processes = 0.0, 0.0, 0
        self.gpu_samples: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            tree = tree_of(self.root)
            self.peak_mb = max(self.peak_mb, tree_memory_mb(self.root, tree))
            self.processes = max(self.processes, len(tree))
            self.root_peak_mb = max(self.root_peak_mb, peak_rss_kb(self.root) / 1024)
            if self.gpu is not None and (busy := self.gpu()) is not None:
                self.gpu_samples.append(busy / 100)
            if self.halt.wait(self.interval):
                return

    def stop(self) -> None:
        self.halt.set()
        self.join()

    @property
    def gpu_busy(self) -> float | None:
        return float(np.mean(self.gpu_samples)) if self.gpu_samples else None


# ---------------------------------------------------------------- one size


def loading_rate(folder: Path, img_size: int, model: str, workers: int | None, seed: int = 0) -> float | None:
    """Images per second of one pass over the train split as the search reads it for training (its
    evaluation transform settings, ``light`` augmentation, batches of 64, ``workers`` processes)."""
    from search.task.data import load_dataset, model_preprocess

    prep = model_preprocess(model, img_size, str(folder))
    data = load_dataset(
        str(folder), img_size, prep.mean, prep.std, seed, 0.2, 0.2, preprocess=prep, workers=workers,
    )
    start, seen = time.monotonic(), 0
    for _, y in data.train.batches(BATCH, shuffle_seed=seed, augment=True):
        seen += len(y)
    return rate(seen, time.monotonic() - start)


def search_command(
    folder: Path, runs: Path, name: str, space: Path, img_size: int, model: str, trials: int,
    epochs: int, workers: int | None, seed: int = 0,
) -> list[str]:
    """The ``edgepareto search`` the bench runs on ``folder`` (a fresh runs dir: the baseline trains)."""
    args = [
        sys.executable, "-m", "search", "search", "--data", str(folder), "--img-size", str(img_size),
        "--model", model, "--trials", str(trials), "--epochs", str(epochs), "--space", str(space),
        "--runs-dir", str(runs), "--name", name, "--latency", "measure", "--repeats", "5",
        "--warm-start", "off", "--seed", str(seed),
    ]
    return args + (["--workers", str(workers)] if workers is not None else [])


def _seconds(trials: pd.DataFrame, key: str) -> list[float]:
    """A stage's seconds per trial of a ``trials.csv`` table (0 where missing)."""
    if key not in trials:
        return []
    return pd.to_numeric(trials[key], errors="coerce").fillna(0.0).tolist()


def measure_size(
    images: int, out: Path, *, img_size: int, model: str, trials: int, epochs: int, workers: int | None,
    runs_dir: Path, space: Path, seed: int = 0, log: Callable[[str], None] = print,
) -> ScalePoint:
    """The synthetic folder of ``images`` (cached), its loading rate, then the search, measured."""
    started = time.monotonic()
    folder = data_folder(runs_dir, images, img_size, seed)
    log(f"N={images}: data {folder} ({time.monotonic() - started:.1f} s)")
    load = loading_rate(folder, img_size, model, workers, seed)
    log(f"N={images}: loading {load or 0:,.0f} images/s")
    runs, name = out / f"n{images}", f"scale-n{images}"
    runs.mkdir(parents=True)
    stderr = runs / "search.log"
    cmd = search_command(folder, runs, name, space, img_size, model, trials, epochs, workers, seed)
    with stderr.open("w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, gpu=_gpu_reader())
        sampler.start()
        try:
            code = proc.wait()
        finally:
            sampler.stop()
        wall = time.monotonic() - started
    text = stderr.read_text(errors="replace")
    if code != 0:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise UserError(f"bench scale: the search on N={images} failed (exit {code}); {stderr}:\n{tail}")
    run = runs / name
    table = pd.read_csv(run / "trials.csv")
    sizes = json.loads((run / "summary.json").read_text())["split_sizes"]
    base = baseline_rates(text)
    point = ScalePoint(
        images=images, img_size=img_size, train_images=int(sizes["train"]), val_images=int(sizes["val"]),
        peak_mb=round(sampler.peak_mb, 1), search_rss_mb=round(sampler.root_peak_mb, 1),
        processes=sampler.processes,
        in_memory_mb=round(dataset_bytes(images, img_size) / MB, 1),
        load_rate=load,
        train_rate=per_trial_rate(int(sizes["train"]), _seconds(table, "train_s"), FINETUNE_EPOCHS),
        baseline_rate=float(np.mean(base)) if base else None,
        eval_rate=per_trial_rate(int(sizes["val"]), _seconds(table, "accuracy_s")),
        gpu_busy=sampler.gpu_busy, wall_s=round(wall, 2),
        shares=tuple(stage_shares(stage_seconds(table).sum().to_dict()).items()), run_dir=str(run),
    )
    log(f"N={images}: peak {point.peak_mb:,.0f} MB, {wall:.0f} s")
    return point


def bench_scale(
    images: Sequence[int] = (2000, 20000), img_size: int = 224, model: str = "resnet18", trials: int = 3,
    epochs: int = 1, workers: int | None = None, runs_dir: str | Path = "runs", seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[ScalePoint]:
    """Every size of ``images`` measured in turn (smallest first); saved as CSV and JSON beside the
    runs in ``runs_dir/bench/scale-DATE-TIME``."""
    runs_dir = Path(runs_dir)
    out = runs_dir / "bench" / f"scale-{dt.datetime.now():%Y%m%d-%H%M%S-%f}"
    out.mkdir(parents=True)
    space = out / "space.yaml"
    space.write_text(SPACE)
    points = [
        measure_size(
            n, out, img_size=img_size, model=model, trials=trials, epochs=epochs, workers=workers,
            runs_dir=runs_dir, space=space, seed=seed, log=log,
        )
        for n in sorted(set(images))
    ]
    write_with(out / "scale.csv", lambda tmp: scale_frame(points).to_csv(tmp, index=False))
    write_text(out / "scale.json", scale_json(points))
    log(f"saved {out / 'scale.csv'}")
    return points


# ---------------------------------------------------------------- the table


def scale_frame(points: Sequence[ScalePoint]) -> pd.DataFrame:
    """One row per size: the measurements, then one ``share_<stage>`` column (a fraction) per stage."""
    rows = []
    for p in points:
        row = {k: v for k, v in asdict(p).items() if k not in ("shares", "run_dir")}
        row.update({f"share_{s}": round(v, 4) for s, v in p.shares})
        rows.append(row)
    return pd.DataFrame(rows)


def scale_json(points: Sequence[ScalePoint]) -> str:
    """The measurements as a JSON list (one object per size, shares as a stage -> fraction object)."""
    return json.dumps([{**asdict(p), "shares": dict(p.shares)} for p in points], indent=2)


def ratio_line(points: Sequence[ScalePoint]) -> str:
    """``peak memory N=20000 / N=2000 = 1.05 (goal <= 1.3); search process alone 1.01``; '' with one
    size only."""
    if len(points) < 2:
        return ""
    small, large = min(points, key=lambda p: p.images), max(points, key=lambda p: p.images)
    ratio = memory_ratio(small.peak_mb, large.peak_mb)
    alone = memory_ratio(small.search_rss_mb, large.search_rss_mb)
    return (
        f"peak memory N={large.images} / N={small.images} = {ratio:.2f} (goal <= {GOAL_RATIO}); "
        f"search process alone (peak RSS) {alone:.2f}"
    )


#: The printed table's rows: (column of ``scale_frame``, label, format).
ROWS = (
    ("images", "images", "{:,.0f}"),
    ("img_size", "image size px", "{:.0f}"),
    ("train_images", "train / val images", None),
    ("peak_mb", "peak memory MB (tree)", "{:,.0f}"),
    ("search_rss_mb", "search process peak RSS MB", "{:,.0f}"),
    ("processes", "processes (most at once)", "{:.0f}"),
    ("in_memory_mb", "data set as float tensors MB", "{:,.0f}"),
    ("load_rate", "loading images/s", "{:,.1f}"),
    ("train_rate", "fine-tuning images/s", "{:,.1f}"),
    ("baseline_rate", "baseline training images/s", "{:,.1f}"),
    ("eval_rate", "evaluation images/s", "{:,.1f}"),
    ("gpu_busy", "GPU busy", "{:.0%}"),
    ("wall_s", "wall s", "{:,.1f}"),
)


def _cell(value: object, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def format_scale(points: Sequence[ScalePoint]) -> str:
    """One column per size, one row per measurement (n/a: nothing measured) and per stage share,
    then the ratio line."""
    frame = scale_frame(points)
    rows: dict[str, list[str]] = {}
    for col, label, fmt in ROWS:
        if col == "train_images":
            rows[label] = [f"{t:,} / {v:,}" for t, v in zip(frame["train_images"], frame["val_images"])]
        else:
            rows[label] = [_cell(v, fmt) for v in frame[col].astype(object)]
    for stage in STAGES:
        rows[f"{stage} share"] = [_cell(v, "{:.1%}") for v in frame[f"share_{stage}"]]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[f"N={p.images}" for p in points])
    lines = [table.to_string()]
    ratio = ratio_line(points)
    if ratio:
        lines.append(ratio)
    return "\n".join(lines)
