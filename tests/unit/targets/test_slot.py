"""The per-device slot (``targets.slot``) with real processes, real flock locks and real onnxruntime runs.

Timestamps are ``time.monotonic()``: on Linux that is ``CLOCK_MONOTONIC``, one clock for the whole
machine since boot, so readings from different processes compare directly, and unlike ``time.time_ns()``
it never jumps when the wall clock is set (NTP), which could fake or hide an overlap.

The worker processes load ``targets/slot.py`` by file path: importing the ``targets`` package pulls in
torch (seconds per process), and the slot module needs nothing from it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from targets.slot import DeviceSlot, default_lock_dir, slot_for
from tests.support.cli import ROOT
from tests.support.runs import wait_until

SLOT_PY = ROOT / "targets" / "slot.py"

PRELUDE = r"""
import contextlib, importlib.util, json, os, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("edgepareto_slot", sys.argv[1])
slot_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slot_mod)
cfg = json.loads(sys.argv[2])
slot = slot_mod.slot_for("host")
now = time.monotonic
"""

# Three rounds of: work (busy CPU), a measurement inside it, more work (0.3 s of work in all, split
# differently per process, so that measurements come while other processes are in the middle of work).
# Logs what ran when.
TRIAL = r"""
import numpy as np
import onnxruntime as ort

opts = ort.SessionOptions()
opts.intra_op_num_threads = opts.inter_op_num_threads = 1
sess = ort.InferenceSession(cfg["onnx"], opts, providers=["CPUExecutionProvider"])
feed = {sess.get_inputs()[0].name: np.ones(cfg["shape"], np.float32)}
sess.run(None, feed)
a = np.random.default_rng(0).standard_normal((96, 96))
if not cfg["lock"]:
    slot.work = slot.measure = contextlib.nullcontext

def busy(seconds):
    end = now() + seconds
    while now() < end:
        a @ a

Path(cfg["ready"]).touch()
while not os.path.exists(cfg["start"]):
    time.sleep(0.001)
log = []
for _ in range(3):
    with slot.work():
        w0 = now()
        busy(cfg["before"])
        called = now()
        with slot.measure():
            m0 = now()
            for _ in range(30):
                sess.run(None, feed)
            m1 = now()
        returned = now()
        busy(0.3 - cfg["before"])
        w1 = now()
    log.append({"kind": "work", "start": w0, "end": w1})
    log.append({"kind": "measure", "start": m0, "end": m1, "outer": [called, returned]})
Path(cfg["out"]).write_text(json.dumps({"pid": os.getpid(), "log": log}))
"""

# Holds work() until the test has asked for a measurement (60 s at most, so that a work() wrongly
# waiting for this one fails the test instead of hanging it), then a little longer; notes when it is
# about to leave.
HOLDER = r"""
with slot.work():
    Path(cfg["entered"]).touch()
    end = now() + 60
    while not os.path.exists(cfg["asked"]) and now() < end:
        time.sleep(0.001)
    time.sleep(0.3)  # a measure() not held back by this work() would get in meanwhile
    Path(cfg["out"]).write_text(json.dumps({"leaving": now()}))
"""

# One long work() (3 s, like a trial's training) that calls checkpoint() between steps of 10 ms.
STEPPER = r"""
with slot.work():
    Path(cfg["entered"]).touch()
    steps = []
    for _ in range(300):
        slot_mod.checkpoint()
        steps.append(now())
        time.sleep(0.01)
Path(cfg["out"]).write_text(json.dumps({"steps": steps}))
"""

# Starts work() back to back until told to stop (or for 6 s at most, so that a starved measurer fails
# the test instead of hanging it); records when it got in. The second looper starts half a period after
# the first, so that their holds always overlap: plain flock would then never let an exclusive request in.
LOOPER = r"""
if cfg["after"]:
    while not os.path.exists(cfg["after"]):
        time.sleep(0.001)
    time.sleep(0.125)
entries, end = [], now() + 6
while not os.path.exists(cfg["stop"]) and now() < end:
    with slot.work():
        entries.append(now())
        Path(cfg["ready"] + ".tmp").write_text(repr(entries[-1]))
        os.replace(cfg["ready"] + ".tmp", cfg["ready"])  # the time of its latest entry
        time.sleep(0.25)
Path(cfg["out"]).write_text(json.dumps(entries))
"""


def spawn(script: str, lock_dir: Path, **cfg) -> subprocess.Popen:
    env = {**os.environ, "EDGEPARETO_LOCK_DIR": str(lock_dir), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + script, str(SLOT_PY), json.dumps(cfg)], env=env,
    )


def wait_for(path: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"timed out waiting for {path.name}"
        time.sleep(0.005)


def finish(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    for p in procs:
        assert p.wait(timeout) == 0


def can_lock(path: Path, mode: int) -> bool:
    """Whether a separate open file description of ``path`` could take ``mode`` right now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> tuple[Path, list[int]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 24, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 24, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 10),
    ).eval()
    shape = [1, 3, 32, 32]
    path = tmp_path_factory.mktemp("slot-model") / "small.onnx"
    torch.onnx.export(model, torch.zeros(shape), str(path), dynamo=False, opset_version=18)
    return path, shape


def run_trials(tmp_path: Path, small_onnx, lock: bool) -> list[dict]:
    """Three trial processes released at the same instant; returns their logs."""
    onnx_path, shape = small_onnx
    start = tmp_path / "start"
    procs = [
        spawn(TRIAL, tmp_path, onnx=str(onnx_path), shape=shape, lock=lock, before=0.05 + 0.1 * i,
              start=str(start), ready=str(tmp_path / f"ready-{i}"), out=str(tmp_path / f"log-{i}.json"))
        for i in range(3)
    ]
    for i in range(3):
        wait_for(tmp_path / f"ready-{i}")
    start.touch()
    finish(procs)
    return [json.loads((tmp_path / f"log-{i}.json").read_text()) for i in range(3)]


def subtract(interval: tuple[float, float], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``interval`` minus the (disjoint) ``holes``."""
    pieces, (lo, hi) = [], interval
    for h_lo, h_hi in sorted(holes):
        if h_lo > lo:
            pieces.append((lo, min(h_lo, hi)))
        lo = max(lo, h_hi)
    if lo < hi:
        pieces.append((lo, hi))
    return [p for p in pieces if p[0] < p[1]]


def overlaps(logs: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(measurements overlapping another process's work or measurement, work overlapping other work).

    A process's work is its work() time minus its measure() calls, taken from the call to the return
    (the measure call also waits for the slot, giving up its shared hold meanwhile); a measurement is
    the time inside measure().
    """
    procs = []
    for entry in logs:
        works = [(e["start"], e["end"]) for e in entry["log"] if e["kind"] == "work"]
        measures = [(e["start"], e["end"]) for e in entry["log"] if e["kind"] == "measure"]
        outer = [tuple(e["outer"]) for e in entry["log"] if e["kind"] == "measure"]
        assert len(works) == len(measures) == 3
        procs.append((entry["pid"], [p for w in works for p in subtract(w, outer)], measures))
    bad, parallel = [], []
    for pid, works, measures in procs:
        for other, o_works, o_measures in procs:
            if other == pid:
                continue
            for m in measures:
                bad += [(pid, m, other, x) for x in o_works + o_measures if m[0] < x[1] and x[0] < m[1]]
            parallel += [(w, x) for w in works for x in o_works if w[0] < x[1] and x[0] < w[1]]
    return bad, parallel


def test_measurements_never_overlap_other_trials(tmp_path, small_onnx):
    bad, parallel = overlaps(run_trials(tmp_path, small_onnx, lock=True))
    assert not bad, f"measurements overlapped other trials' activity: {bad}"
    assert parallel, "trials' ordinary work should still run in parallel"


def test_control_without_slot_overlaps(tmp_path, small_onnx):
    bad, _ = overlaps(run_trials(tmp_path, small_onnx, lock=False))
    assert bad, "without the slot the simultaneous trials should have overlapped"


def test_holds_in_one_process(tmp_path):
    slot = DeviceSlot("remote:10.0.0.7:8765", tmp_path / "locks")
    main = tmp_path / "locks" / "remote-10.0.0.7-8765.lock"
    assert (main.parent.stat().st_mode & 0o777) == 0o700
    assert can_lock(main, fcntl.LOCK_EX)
    with slot.measure():  # outside any work()
        assert not can_lock(main, fcntl.LOCK_SH)
        with slot.measure():
            assert not can_lock(main, fcntl.LOCK_SH)
        assert not can_lock(main, fcntl.LOCK_SH)
    assert can_lock(main, fcntl.LOCK_EX)
    with slot.work():
        with slot.work():
            assert can_lock(main, fcntl.LOCK_SH) and not can_lock(main, fcntl.LOCK_EX)
        assert can_lock(main, fcntl.LOCK_SH) and not can_lock(main, fcntl.LOCK_EX)
        with slot.measure():
            assert not can_lock(main, fcntl.LOCK_SH)
        assert can_lock(main, fcntl.LOCK_SH) and not can_lock(main, fcntl.LOCK_EX)
    assert can_lock(main, fcntl.LOCK_EX)


def test_idle_gives_the_shared_hold_back_while_waiting(tmp_path):
    """A trial waiting for another (the baseline's accuracy) must not block that trial's measurement."""
    slot = DeviceSlot("host", tmp_path)
    main = tmp_path / "host.lock"
    with slot.work():
        assert not can_lock(main, fcntl.LOCK_EX)
        with slot.idle():
            assert can_lock(main, fcntl.LOCK_EX)  # another process could measure now
        assert not can_lock(main, fcntl.LOCK_EX) and can_lock(main, fcntl.LOCK_SH)
    with slot.idle():  # outside work(): nothing to give back
        assert can_lock(main, fcntl.LOCK_EX)
    assert can_lock(main, fcntl.LOCK_EX)


def test_slot_for_is_one_instance_in_the_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPARETO_LOCK_DIR", str(tmp_path / "env-locks"))
    assert default_lock_dir() == tmp_path / "env-locks"
    slot = slot_for("host/test-slot-for")
    assert slot is slot_for("host/test-slot-for")
    assert (tmp_path / "env-locks" / "host-test-slot-for.lock").exists()
    assert (tmp_path / "env-locks" / "host-test-slot-for.turn").exists()


def test_measure_waits_for_another_process_work(tmp_path):
    holder = spawn(HOLDER, tmp_path, entered=str(tmp_path / "entered"), asked=str(tmp_path / "asked"),
                   out=str(tmp_path / "holder.json"))
    wait_for(tmp_path / "entered")
    slot = DeviceSlot("host", tmp_path)
    with slot.work():
        in_work = time.monotonic()
        asked = time.monotonic()
        (tmp_path / "asked").touch()  # the holder leaves only after this
        with slot.measure():
            measuring = time.monotonic()
        assert can_lock(tmp_path / "host.lock", fcntl.LOCK_SH)  # back to shared
    finish([holder])
    leaving = json.loads((tmp_path / "holder.json").read_text())["leaving"]
    assert in_work < leaving, "work() should not wait for another process's work()"
    assert asked < leaving < measuring, "measure() should wait until the other process left work()"
    assert 0 < slot.waited_s <= measuring - asked  # the wait is counted, and only the wait


def test_checkpoint_lets_a_measurement_in_between_steps(tmp_path):
    """A measurement waits one step of another trial's work, not the rest of that trial."""
    stepper = spawn(STEPPER, tmp_path, entered=str(tmp_path / "entered"), out=str(tmp_path / "steps.json"))
    wait_for(tmp_path / "entered")  # the stepper is inside its work() from here on
    slot = DeviceSlot("host", tmp_path)
    with slot.measure():
        got = time.monotonic()
        time.sleep(0.3)  # the stepper must be held back meanwhile
        left = time.monotonic()
    finish([stepper])
    steps = json.loads((tmp_path / "steps.json").read_text())["steps"]
    # ordering, not speed: the measurement got in between two steps of the other process's work(),
    # which went on stepping after it (it did not wait for the end of that work)
    assert steps[-1] > left, "the measurement waited for the other process's whole work()"
    assert [t for t in steps if t > left], "the other process did not step after the measurement"
    assert not [t for t in steps if got < t < left], "the other process stepped during the measurement"


def test_measurer_is_not_starved(tmp_path):
    stop = tmp_path / "stop"
    loopers = [
        spawn(LOOPER, tmp_path, stop=str(stop), ready=str(tmp_path / f"ready-{i}"),
              after=str(tmp_path / "ready-0") if i else "", out=str(tmp_path / f"entries-{i}.json"))
        for i in range(2)
    ]
    try:
        for i in range(2):  # both loopers busy: their work() holds overlap from here on
            wait_for(tmp_path / f"ready-{i}")
        slot = DeviceSlot("host", tmp_path)
        asked = time.monotonic()
        with slot.measure():
            got = time.monotonic()
        for i in range(2):  # the loopers resume after the measurement
            wait_until(lambda i=i: float((tmp_path / f"ready-{i}").read_text()) > got, 30,
                       f"looper {i} back in work()")
    finally:
        stop.touch()
    finish(loopers)
    # not starved: the measurement got in while both loopers were still looping (they stop after 6 s
    # at most), between entries of theirs
    for i in range(2):
        entries = json.loads((tmp_path / f"entries-{i}.json").read_text())
        assert entries and entries[0] < asked and entries[-1] > got
