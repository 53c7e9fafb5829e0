"""A streamed ImageFolder's memory does not grow with the number of images, and ``bench scale`` end to end.

The memory test reads two data sets of the bench's synthetic JPEGs, N=150 and N=6000 at 128 px, the way a
trial does (``load_dataset``, one epoch of ``spaces.train.fit``, ``onnx_accuracy`` over the validation
split; two DataLoader workers, batches of 16), each in a process of its own, with a model of next to no
compute so that the data is what costs. Holding the data as float tensors took at least one copy of the
extra images, 3 x S x S x 4 bytes each (about 1.1 GB here; the old loader held about three). Streamed, the
main process's peak RSS (``ru_maxrss``, exact; where tensors of the data would live) must grow by under a
tenth of one copy (10 MB in repeated runs), and the sampled peak of the whole tree (``tree_mb``: the PSS
of anonymous memory, the libraries once, the shared memory that carries batches) by under half: the
workers' memory is noisy (heap pages of the main process they copy and buffers they keep grow over each
worker's first batches, then level off; a sample can land on a fork) but bounded: 90 to 220 MB, a fifth of
one copy at most, in repeated runs on 2 shared cores. Holding the data (a list of the batches, or one
tensor of them) in the same script grows the tree by 1.4 and 2.2 GB.
"""

import subprocess
import sys

import pandas as pd
import pytest

from search.bench.scale import ROWS, TreeSampler, write_digits
from search.config.bounds import dataset_bytes
from search.core.stages import STAGES
from tests.support.cli import ROOT, run_cli

SMALL, LARGE, SIZE = 150, 6000, 128
#: Largest growth from SMALL to LARGE, as shares of one float copy of the extra images (3 x S x S x 4 bytes).
MAIN_SHARE, TREE_SHARE = 0.1, 0.5
SCRIPT = """
import resource, sys
from pathlib import Path
import torch
from search.candidate.build import export_onnx
from search.candidate.evaluate import onnx_accuracy
from search.task.data import load_dataset
from spaces.train import fit

folder, size, out, workers = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
data = load_dataset(folder, size, (0.5,) * 3, (0.5,) * 3, 0, 0.2, 0.2, augment="light", workers=workers)
assert data.streamed
torch.manual_seed(0)
model = torch.nn.Sequential(  # next to no compute: the data's memory is what is measured
    torch.nn.AvgPool2d(8), torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10),
)
fit(model, data.train, epochs=1, lr=3e-3, batch_size=16, seed=0)
path = export_onnx(model, data.val.images(1), out / "model.onnx")
accuracy = onnx_accuracy(path, data.val, batch_size=16)
print(len(data.train), len(data.val), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, accuracy)
"""


def _measure(folder, tmp_path) -> tuple[float, float, int, list[str]]:
    """The script on ``folder``: its tree's sampled peak (``tree_mb``) and its own peak RSS (MB), the most
    processes the tree had, and what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(folder), str(SIZE), str(tmp_path), "2"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    sampler = TreeSampler(proc.pid, interval=0.1)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        sampler.stop()
    assert proc.returncode == 0, err
    printed = out.split()
    return sampler.peak_mb, int(printed[2]) / 1024, sampler.processes, printed


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_streamed_memory_does_not_grow_with_the_number_of_images(tmp_path):
    tree, main = {}, {}
    for n in (SMALL, LARGE):
        folder = write_digits(tmp_path / f"n{n}", n, SIZE)
        tree[n], main[n], processes, printed = _measure(folder, tmp_path)
        assert int(printed[0]) + int(printed[1]) == n * 4 // 5, printed  # train + val
        assert processes >= 3, processes  # the two workers ran
    in_memory = dataset_bytes(LARGE - SMALL, SIZE, copies=1) / 2**20
    said = (
        f"from N={SMALL} to N={LARGE}: main process peak RSS {main[SMALL]:.0f} -> {main[LARGE]:.0f} MB, "
        f"tree peak {tree[SMALL]:.0f} -> {tree[LARGE]:.0f} MB; in memory the extra images took "
        f"{in_memory:.0f} MB per copy"
    )
    print(said)
    assert main[LARGE] - main[SMALL] < MAIN_SHARE * in_memory, said
    assert tree[LARGE] - tree[SMALL] < TREE_SHARE * in_memory, said


@pytest.mark.timeout(180)
@pytest.mark.slow  # a whole search in a subprocess: ~15 s
def test_bench_scale_prints_every_measurement_for_a_tiny_data_set(tmp_path, capfd):
    code, out, err = run_cli(
        ["bench", "scale", "--images", "60", "--img-size", "32", "--model", "test_resnet", "--trials", "2",
         "--workers", "1", "--runs-dir", str(tmp_path)], capfd,
    )
    assert code == 0, err
    for label in [label for _, label, _ in ROWS] + [f"{s} share" for s in STAGES]:
        assert label in out, label
    (saved,) = (tmp_path / "bench").glob("scale-*/scale.csv")
    row = pd.read_csv(saved).iloc[0]
    assert (row["images"], row["train_images"], row["val_images"]) == (60, 36, 12)
    assert 100 < row["search_rss_mb"] < 8000 and 100 < row["peak_mb"] < 8000 and row["wall_s"] > 0
    for rate in ("load_rate", "train_rate", "baseline_rate", "eval_rate"):
        assert row[rate] > 0, rate
    assert sum(row[f"share_{s}"] for s in STAGES) == pytest.approx(1, abs=1e-3)
    assert row["share_train"] > 0 and row["share_accuracy"] > 0
    assert (tmp_path / ".cache" / "bench-scale" / "n60-s32-seed0" / "done.json").is_file()
