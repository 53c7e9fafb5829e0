"""``bench scale``'s pure parts: rates, stage shares, the memory ratio, the process tree, the table,
the synthetic folder and the argument checks (the measured run: tests/e2e/test_scale.py)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from search.bench.scale import (
    DONE_FILE,
    MIN_IMAGES,
    ROWS,
    ScalePoint,
    Usage,
    baseline_rates,
    descendants,
    format_scale,
    memory_ratio,
    parse_images,
    peak_rss_kb,
    per_trial_rate,
    rate,
    ratio_line,
    scale_frame,
    scale_json,
    tree_mb,
    tree_memory_mb,
    tree_of,
    usage,
    write_digits,
)
from search.core.errors import UserError
from search.core.stages import STAGE_KEYS, STAGES
from search.task.data import min_per_class


def _point(images: int, peak: float, **kw) -> ScalePoint:
    base = dict(
        images=images, img_size=32, train_images=images * 6 // 10, val_images=images // 5, peak_mb=peak,
        search_rss_mb=peak / 2, processes=3, in_memory_mb=1.0, load_rate=100.0, train_rate=50.0,
        baseline_rate=None, eval_rate=200.0,
        gpu_busy=None, wall_s=10.0, shares=tuple((s, 1 / len(STAGES)) for s in STAGES), run_dir="x",
    )
    return ScalePoint(**{**base, **kw})


def test_rate_is_none_without_time():
    assert rate(100, 4.0) == 25.0
    assert rate(100, 0.0) is None and rate(100, -1.0) is None and rate(100, math.nan) is None


def test_per_trial_rate_counts_only_trials_that_spent_time_in_the_stage():
    # three trials fine-tuned 1 epoch of 600 images in 2 + 3 + 1 s; the baseline (0) and a duplicate (NaN)
    assert per_trial_rate(600, [0.0, 2.0, math.nan, 3.0, 1.0]) == pytest.approx(600 * 3 / 6)
    assert per_trial_rate(600, [2.0, 2.0], passes=2) == pytest.approx(600)
    assert per_trial_rate(600, [0.0, math.nan]) is None and per_trial_rate(600, []) is None


def test_memory_ratio():
    assert memory_ratio(1000.0, 1100.0) == pytest.approx(1.1)
    assert memory_ratio(0.0, 5.0) == math.inf


def test_baseline_rates_read_the_epoch_lines_only():
    log = (
        "baseline: training resnet18 for 2 epochs (lr 0.003, seed 0); cached after\n"
        "baseline: resnet18 epoch 1/2 loss 2.3021 (1,234 images/s)\n"
        "[2/3 00:05] trial 1: fine-tune 1/1 loss 1.475 (130 images/s) | best -\n"
        "baseline: resnet18 epoch 2/2 loss nan (56 images/s)\n"
    )
    assert baseline_rates(log) == [1234.0, 56.0]
    assert baseline_rates("baseline: cached runs/.cache/baselines/x/model.pt") == []


def test_descendants_walk_the_whole_tree_and_nothing_else():
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 21: 20}
    assert descendants(parents, 10) == {10, 11, 12, 13}
    assert descendants(parents, 13) == {13}
    assert descendants(parents, 99) == {99}  # gone: itself only (its PSS reads 0)


def test_tree_mb_counts_anonymous_pss_files_of_the_root_and_shared_memory_once():
    # the root: 100 MB anonymous, 30 MB touched shm, 400 MB of libraries; a worker: 50 anonymous, 10 shm
    root, worker = Usage(100 * 1024, 30 * 1024, 400 * 1024), Usage(50 * 1024, 10 * 1024, 400 * 1024)
    assert tree_mb(root, [worker], {(1, 2): 64 * 2**20}) == pytest.approx(150 + 400 + 64)
    assert tree_mb(root, [worker], {(1, 2): 8 * 2**20}) == pytest.approx(150 + 400 + 40)  # mapped > held
    assert tree_mb(Usage(), [], {}) == 0


def test_usage_of_this_process_and_of_a_gone_one():
    mine = usage(os.getpid())
    assert mine.anon > 0 and mine.rss_file > 0
    assert usage(2**22 + 1) == Usage()  # above the largest pid: gone
    assert peak_rss_kb(os.getpid()) >= mine.rss_file > 0 and peak_rss_kb(2**22 + 1) == 0


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("code", [
    "b = bytearray(200 * 2**20)",  # private memory
    # a DataLoader batch in flight: an unlinked shared-memory file held open, in no process's PSS
    "fd = os.open(f'/dev/shm/ep-test-{os.getpid()}', os.O_CREAT | os.O_RDWR); "
    "os.unlink(f'/dev/shm/ep-test-{os.getpid()}'); os.posix_fallocate(fd, 0, 200 * 2**20)",
], ids=["private", "shm-held"])
def test_tree_memory_counts_a_child_process(code):
    child = _child(f"import os, sys, time\n{code}\nprint('ready', flush=True); time.sleep(30)")
    try:
        assert child.stdout.readline().strip() == "ready"
        assert tree_of(os.getpid()) >= {os.getpid(), child.pid}
        alone = tree_memory_mb(child.pid, {child.pid})
        assert 200 <= alone - usage(child.pid).rss_file / 1024 < 300
        assert tree_memory_mb(os.getpid(), tree_of(os.getpid())) >= alone - usage(child.pid).rss_file / 1024
    finally:
        child.kill()
        child.wait()


def test_parse_images_checks_sizes():
    assert parse_images(("2000", "20000")) == (2000, 20000)
    assert min_per_class(0.2, 0.2) * 10 == MIN_IMAGES
    for bad in (("2k",), (), (str(MIN_IMAGES - 1), "100")):
        with pytest.raises(UserError, match="--images"):
            parse_images(bad)


def test_table_has_every_row_and_the_ratio_line():
    points = [_point(2000, 1000.0), _point(20000, 1100.0, gpu_busy=0.42, train_rate=None)]
    text = format_scale(points)
    labels = [label for _, label, _ in ROWS] + [f"{s} share" for s in STAGES]
    assert {"peak memory MB (tree)", "fine-tuning images/s", "evaluation images/s", "GPU busy"} <= set(labels)
    for label in labels:
        assert label in text, label
    assert "N=2000" in text and "N=20000" in text and "42%" in text and "n/a" in text
    assert text.splitlines()[-1] == (
        "peak memory N=20000 / N=2000 = 1.10 (goal <= 1.3); search process alone (peak RSS) 1.10"
    )
    assert ratio_line(points[:1]) == "" and "peak memory N=" not in format_scale(points[:1])
    frame = scale_frame(points)
    assert [f"share_{s}" for s in STAGES] == [c for c in frame.columns if c.startswith("share_")]
    assert json.loads(scale_json(points))[1]["shares"]["train"] == pytest.approx(1 / len(STAGES))
    assert len(STAGE_KEYS) == len(STAGES)


def test_write_digits_writes_balanced_seeded_jpegs_and_reuses_them(tmp_path):
    root = write_digits(tmp_path / "d", 53, 24, seed=3)
    counts = {c.name: len(list(c.glob("*.jpg"))) for c in root.iterdir() if c.is_dir()}
    assert counts == {str(c): 6 if c < 3 else 5 for c in range(10)}
    with Image.open(root / "7" / "000007.jpg") as im:
        assert im.format == "JPEG" and im.size == (24, 24) and im.mode == "RGB"
        first = np.asarray(im)
    assert first.std() > 0  # coloured, noisy
    stamp = (root / DONE_FILE).stat().st_mtime_ns
    assert write_digits(tmp_path / "d", 53, 24, seed=3) == root
    assert (root / DONE_FILE).stat().st_mtime_ns == stamp  # reused, not rewritten
    again = write_digits(tmp_path / "e", 53, 24, seed=3)
    with Image.open(again / "7" / "000007.jpg") as im:
        assert np.array_equal(np.asarray(im), first)  # seeded
    write_digits(tmp_path / "d", 60, 24, seed=3)  # other settings: rewritten in place
    assert sum(1 for _ in root.rglob("*.jpg")) == 60
    assert not list(tmp_path.glob(".*partial"))
