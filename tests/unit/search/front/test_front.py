"""The front on plain numbers (``pareto_front``, ``is_dominated``, ``hypervolume``), and a finished run
read back from a folder this test writes (``load_run``, ``format_table``), without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

from search.config.run_config import RunConfig
from search.core.errors import UserError
from search.front.pareto import hypervolume, is_dominated, pareto_front
from search.front.run import format_table, load_report, load_run
from search.front.trials import trials_frame
from tests.support.cli import run_cli
from tests.support.studies import stage_attrs

MAX_MIN = ["maximize", "minimize"]
MIN_MIN = ["minimize", "minimize"]
ACC_LAT_SIZE = ["maximize", "minimize", "minimize"]
ROOT = Path(__file__).resolve().parents[4]


# -- the maths ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("points", "directions", "front"), [
    ([], MAX_MIN, []),
    ([(0.5, 3.0)], MAX_MIN, [0]),
    # accuracy up, latency down: (0.9, 2) beats (0.8, 2) and (0.9, 3); (0.95, 5) and (0.7, 1) trade off
    ([(0.8, 2.0), (0.9, 2.0), (0.9, 3.0), (0.95, 5.0), (0.7, 1.0)], MAX_MIN, [1, 3, 4]),
    # the same points with latency maximised too: (0.95, 5) dominates every other one
    ([(0.8, 2.0), (0.9, 2.0), (0.9, 3.0), (0.95, 5.0), (0.7, 1.0)], ["maximize", "maximize"], [3]),
    # ties: equal points are all kept; equal in one objective and worse in the other is dominated
    ([(1.0, 2.0), (1.0, 2.0), (1.0, 3.0), (0.5, 4.0)], MIN_MIN, [0, 1, 3]),
    ([(2.0, 2.0), (2.0, 2.0)], MIN_MIN, [0, 1]),
    # three objectives, mixed: nobody beats the first on accuracy, the last is best on size only
    ([(0.97, 4.0, 9.0), (0.95, 4.0, 9.0), (0.90, 1.0, 9.0), (0.90, 1.0, 9.5), (0.5, 9.0, 0.1)],
     ACC_LAT_SIZE, [0, 2, 4]),
    # negative and mixed-sign values
    ([(-1.0, -5.0), (-2.0, -6.0), (0.0, -4.0)], MAX_MIN, [0, 1, 2]),
])
def test_pareto_front(points, directions, front):
    assert pareto_front(points, directions) == front


def test_pareto_front_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="direction must be one of"):
        pareto_front([(1.0, 2.0)], ["maximize", "fastest"])


@pytest.mark.parametrize(("point", "others", "directions", "dominated"), [
    ((0.9, 2.0), [], MAX_MIN, False),
    ((0.9, 2.0), [(0.9, 2.0)], MAX_MIN, False),  # an equal point does not dominate
    ((0.9, 2.0), [(0.9, 1.9)], MAX_MIN, True),
    ((0.9, 2.0), [(0.91, 2.0)], MAX_MIN, True),
    ((0.9, 2.0), [(0.95, 2.5), (0.85, 1.0)], MAX_MIN, False),  # each is better in one only
    ((0.9, 2.0), [(0.95, 2.5), (0.85, 1.0)], MIN_MIN, True),  # minimising both: (0.85, 1) wins
    ((0.9, 2.0, 1.0), [(0.9, 2.0, 0.5)], ACC_LAT_SIZE, True),
    ((0.9, 2.0, 1.0), [(0.9, 2.0, 1.5)], ACC_LAT_SIZE, False),
])
def test_is_dominated(point, others, directions, dominated):
    assert is_dominated(point, others, directions) is dominated


@pytest.mark.parametrize(("points", "directions", "reference", "volume"), [
    ([], MIN_MIN, (4, 4), 0.0),
    ([(1, 1)], MIN_MIN, (3, 4), 6.0),
    ([(1, 3), (2, 2), (3, 1)], MIN_MIN, (4, 4), 6.0),  # a staircase: 3 + 2 + 1
    ([(1, 1), (2, 2)], MIN_MIN, (3, 3), 4.0),  # a dominated point adds nothing
    ([(1, 1), (1, 1)], MIN_MIN, (3, 3), 4.0),  # nor does a duplicate
    ([(3, 1), (1, 3)], ["maximize", "maximize"], (0, 0), 5.0),
    ([(0.9, 1.0), (0.8, 0.5)], MAX_MIN, (0.5, 2.0), 0.4 * 1.0 + 0.3 * 0.5),
    ([(5, 5)], MIN_MIN, (4, 4), 0.0),  # outside the reference box
    ([(1, 4)], MIN_MIN, (4, 4), 0.0),  # on its edge: no volume
    ([(0.4, 1.0)], MAX_MIN, (0.5, 2.0), 0.0),  # worse accuracy than the reference
    ([(5, 5), (2, 3)], MIN_MIN, (4, 4), 2.0),  # only the point inside counts
    ([(1, 1, 1)], ["minimize"] * 3, (2, 3, 4), 6.0),
    ([(0.9, 1.0, 1.0), (0.8, 0.5, 2.0)], ACC_LAT_SIZE, (0.5, 2.0, 3.0), 0.4 * 1 * 2 + 0.3 * 0.5 * 1),
])
def test_hypervolume(points, directions, reference, volume):
    assert hypervolume(points, directions, reference) == pytest.approx(volume)


# -- a run folder -----------------------------------------------------------------------------------

CFG = RunConfig(name="demo", model="resnet18", trials=4, target="rpi4", latency="predict")


def finished_study(stages: Mapping[int, Mapping[str, float]] | None = None) -> optuna.Study:
    """The trials a short search leaves: a baseline, two candidates, one failure; ``stages``: trial
    number -> the seconds per stage it recorded (none by default, as a run from before stage times)."""
    stages = stages or {}
    study = optuna.create_study(directions=CFG.directions)
    rows = [
        (TrialState.COMPLETE, [0.96, 4.0, 2.0], {"baseline": True, "techniques": "baseline"}),
        (TrialState.COMPLETE, [0.95, 2.0, 0.5], {"techniques": "prune(0.5)+int8"}),
        (TrialState.FAIL, None, {"fail_reason": "CandidateError: export failed"}),
        (TrialState.COMPLETE, [0.90, 1.0, 1.0], {"techniques": "lowrank(0.25)"}),
    ]
    for number, (state, values, attrs) in enumerate(rows):
        if values is not None:
            attrs = {**attrs, "model": "resnet18", "accuracy": values[0], "latency_ms": values[1],
                     "size_mb": values[2], "artifact": f"trials/{number:04d}/model.onnx"}
        if number in stages:
            attrs = {**attrs, **stage_attrs(**stages[number])}
        study.add_trial(create_trial(state=state, values=values, user_attrs=attrs))
    return study


def pareto_rows() -> pd.DataFrame:
    """``pareto.csv`` as finalize writes it, with paths from where the run was made."""
    old = "/elsewhere/runs/demo"
    calibrated = {"latency_source": "predicted:calibrated", "latency_error_pct": 8.4}
    pareto = pd.DataFrame([
        {"trial": 0, "model": "resnet18", "role": "baseline", "techniques": "baseline",
         "test_accuracy": 0.96, "val_accuracy": 0.96, "latency_ms": 4.0, "latency_p90_ms": 4.0, **calibrated,
         "size_mb": 2.0, "compressed_mb": 1.8, "params": 11000, "macs": 500000,
         "path": f"{old}/trials/0000/model.onnx"},
        {"trial": 1, "model": "resnet18", "role": "pareto", "techniques": "prune(0.5)+int8",
         "test_accuracy": 0.95, "val_accuracy": 0.95, "latency_ms": 2.0, "latency_p90_ms": 2.0, **calibrated,
         "size_mb": 0.5, "compressed_mb": 0.4, "params": 5500, "macs": 250000,
         "path": f"{old}/trials/0001/model.onnx"},
        {"trial": 3, "model": "resnet18", "role": "pareto", "techniques": "lowrank(0.25)",
         "test_accuracy": 0.90, "val_accuracy": 0.90, "latency_ms": 1.0, "latency_p90_ms": 1.0,
         "latency_source": "measured", "latency_error_pct": None,
         "size_mb": 1.0, "compressed_mb": 0.9, "params": 3000, "macs": 120000,
         "path": f"{old}/trials/0003/model.onnx"},
    ])
    base = pareto.iloc[0]
    pareto["accuracy_drop_pt"] = (base["test_accuracy"] - pareto["test_accuracy"]) * 100
    pareto["speedup"] = base["latency_ms"] / pareto["latency_ms"]
    pareto["compression"] = base["size_mb"] / pareto["size_mb"]
    return pareto


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "run.yaml").write_text("name: demo\n")
    trials = trials_frame(finished_study())
    trials.to_csv(run / "trials.csv", index=False)
    pareto = pareto_rows()
    pareto.to_csv(run / "pareto.csv", index=False)
    summary = {
        "run": "demo", "config": CFG.to_dict(),
        "objectives": dict(zip(CFG.objectives, CFG.directions, strict=True)),
        "target": "rpi4: predicted", "latency": "latency predict on rpi4",
        "trials": {"total": 4, "complete": 3, "fail": 1},
        "failure_reasons": {"CandidateError: export failed": 1},
        "pareto": json.loads(pareto.to_json(orient="records")),
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_load_run_reads_the_three_files(run_dir):
    report = load_run(str(run_dir))
    assert report.run_dir == run_dir
    assert list(report.pareto["trial"]) == [0, 1, 3]
    assert list(report.pareto["role"]) == ["baseline", "pareto", "pareto"]
    assert list(report.trials["state"]) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert report.trials.loc[2, "fail_reason"] == "CandidateError: export failed"
    assert report.summary["trials"] == {"total": 4, "complete": 3, "fail": 1}
    assert report.config == CFG
    # paths point into the folder as it is now, through each trial's artifact
    assert list(report.pareto["path"]) == [str(run_dir / f"trials/{n:04d}/model.onnx") for n in (0, 1, 3)]
    assert load_report(run_dir).pareto.equals(report.pareto)


def test_select_on_a_loaded_run(run_dir):
    report = load_run(run_dir)
    assert report.select().trial == 0  # best accuracy
    assert report.select(max_latency_ms=2.5).trial == 1
    assert report.select(prefer="latency").trial == 3
    assert report.select(max_size_mb=0.6, min_accuracy=0.9).trial == 1
    miss = report.select(max_latency_ms=0.5)
    assert (miss.fits, miss.trial, miss.candidates) == (False, 3, 0)
    assert miss.shortfalls == pytest.approx({"max_latency_ms": 1.0})


def test_format_table(run_dir):
    table = format_table(load_run(run_dir).pareto)
    header, *rows = table.splitlines()
    assert header.split() == [
        "trial", "role", "techniques", "test", "acc", "drop", "pt", "latency", "ms", "latency", "from",
        "speed-up", "size", "MB", "compression", "model.onnx",
    ]
    assert len(rows) == 3
    assert rows[0].split()[:8] == [
        "0", "baseline", "baseline", "0.9600", "+0.00", "4.000", "predicted", "±8%",
    ]
    assert rows[1].split()[:11] == [
        "1", "pareto", "prune(0.5)+int8", "0.9500", "+1.00", "2.000", "predicted", "±8%", "2.00x", "0.500",
        "4.0x",
    ]
    assert rows[2].split()[:9] == [
        "3", "pareto", "lowrank(0.25)", "0.9000", "+6.00", "1.000", "measured", "4.00x", "1.000",
    ]
    assert rows[2].endswith(str(run_dir / "trials/0003/model.onnx"))


def test_format_table_adds_columns_only_when_they_say_something(run_dir):
    pareto = load_run(run_dir).pareto
    measured = pareto.assign(latency_source="measured")
    assert "latency from" not in format_table(measured)
    assert "model" not in format_table(measured).splitlines()[0].split()
    two_models = measured.assign(model=["resnet18", "vit_tiny", "vit_tiny"])
    header = format_table(two_models).splitlines()[0].split()
    assert header[:3] == ["trial", "model", "role"]
    assert format_table(two_models).splitlines()[2].split()[:2] == ["1", "vit_tiny"]


def test_show_prints_where_the_time_goes(run_dir, capfd):
    """After the table and the trial counts; nothing for a run from before stage times. The failed
    trial's 30 s of training are left out: the shares are of the completed trials' time."""
    show = ["show", "demo", "--runs-dir", str(run_dir.parent)]
    code, out, _ = run_cli(show, capfd)
    assert code == 0 and out.splitlines()[-1].startswith("trials: ") and "time per stage" not in out
    stages = {0: {"accuracy": 2, "latency": 1, "export": 1}, 2: {"train": 30},
              1: {"train": 12, "recalibrate": 0.1, "accuracy": 2, "export": 1, "quantize": 0.5, "other": 0.5},
              3: {"train": 6, "accuracy": 1, "latency": 1}}
    trials_frame(finished_study(stages)).to_csv(run_dir / "trials.csv", index=False)
    code, out, _ = run_cli(show, capfd)
    *_, counts, line = out.splitlines()
    assert code == 0 and counts.startswith("trials: ")
    assert line == ("time per stage: train 64%, accuracy 18%, export 7%, latency 7%, quantize 2%, "
                    "other 2% (median trial 8.0 s)")


def test_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as err:
        load_run(tmp_path / "runs" / "nope")
    assert str(err.value) == f"no run at {tmp_path / 'runs' / 'nope'}"


@pytest.mark.parametrize("present", [(), ("pareto.csv",), ("pareto.csv", "trials.csv")])
def test_a_run_without_results_is_a_user_error(run_dir, present):
    for name in ("pareto.csv", "trials.csv", "summary.json"):
        if name not in present:
            (run_dir / name).unlink()
    with pytest.raises(UserError) as err:
        load_run(run_dir)
    assert str(err.value) == "run demo has no results yet; finish it with --resume demo"


def test_reading_and_selecting_import_no_model_code(run_dir):
    script = textwrap.dedent(f"""
        import sys
        import search
        report = search.load_run({str(run_dir)!r})
        front = report.pareto
        choice = report.select(max_latency_ms=2.5)
        print(len(front), choice.trial)
        print([m for m in ("torch", "timm", "onnxruntime") if m in sys.modules])
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["3 1", "[]"]
