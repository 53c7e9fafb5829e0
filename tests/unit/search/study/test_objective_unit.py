"""Feasibility (budgets as constraints, the baseline trial) and the objective's bookkeeping, with the
build and evaluation steps replaced: nothing here trains, exports or measures."""

from __future__ import annotations

import json
import types
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from search.candidate.evaluate import Metrics
from search.config.run_config import RunConfig
from search.study import objective as objective_module
from search.study.cluster import BASELINE_ATTR
from search.study.constraints import MODEL_ATTR, baseline_trial, budget_constraints, is_feasible
from search.study.objective import Objective, baseline_accuracy_key, objective_values
from search.study.progress import Progress
from search.study.runs_root import RunsRoot
from search.task.data import SkipLog
from targets import Latency
from tests.support.studies import new_study, quiet_progress


def metrics(accuracy=0.8, latency_ms=2.0, size_mb=0.5, source="predicted:analytic") -> Metrics:
    return Metrics(
        accuracy=accuracy, latency_ms=latency_ms, latency_p90_ms=latency_ms * 1.1, latency_source=source,
        latency_error_pct=None, size_mb=size_mb, compressed_mb=size_mb / 2, params=1000, macs=50_000,
        sparsity=0.0,
    )


# -- budgets ----------------------------------------------------------------------------------------

NO_BUDGET = {"max_accuracy_drop": None}


@pytest.mark.parametrize(("budget", "baseline", "expected"), [
    ({}, 0.9, {"max_accuracy_drop": 5.0}),  # the default 5-point drop: 10 points lost, 5 too many
    ({}, None, {"max_accuracy_drop": -5.0}),  # no baseline yet: judged against itself
    ({"max_accuracy_drop": 12.5}, 0.9, {"max_accuracy_drop": -2.5}),
    ({**NO_BUDGET, "min_accuracy": 0.85}, None, {"min_accuracy": 0.05}),
    ({**NO_BUDGET, "min_accuracy": 0.75}, 0.99, {"min_accuracy": -0.05}),
    ({**NO_BUDGET, "max_latency_ms": 1.5}, None, {"max_latency_ms": 0.5}),
    ({**NO_BUDGET, "max_size_mb": 2.0}, None, {"max_size_mb": -1.5}),
    (NO_BUDGET, 0.9, {}),
    ({"min_accuracy": 0.5, "max_latency_ms": 4.0, "max_size_mb": 0.25}, 0.82,
     {"max_accuracy_drop": -3.0, "min_accuracy": -0.3, "max_latency_ms": -2.0, "max_size_mb": 0.25}),
])
def test_budget_constraints(budget, baseline, expected):
    got = budget_constraints(metrics(), RunConfig(**budget), baseline)
    assert list(got) == list(expected)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(("constraints", "feasible"), [
    ({}, True),
    ({"max_size_mb": 0.0}, True),
    ({"max_size_mb": -3.0, "min_accuracy": -0.01}, True),
    ({"max_size_mb": 1e-9}, False),
    ({"max_size_mb": -3.0, "max_latency_ms": 0.2}, False),
])
def test_is_feasible_is_every_constraint_at_most_zero(constraints, feasible):
    trial = create_trial(values=[0.9, 1.0, 1.0], constraints=constraints or None)
    assert is_feasible(trial) is feasible


def baseline_of(
    model: str | None, state=TrialState.COMPLETE, baseline=True, tag=""
) -> optuna.trial.FrozenTrial:
    attrs = {"tag": tag}
    if baseline:
        attrs[BASELINE_ATTR] = True
    if model is not None:
        attrs[MODEL_ATTR] = model
    values = [0.9, 1.0, 1.0] if state == TrialState.COMPLETE else None
    return create_trial(state=state, values=values, user_attrs=attrs)


def test_baseline_trial_picks_the_completed_baseline_of_the_model():
    trials = [
        baseline_of("resnet18", TrialState.FAIL, tag="resnet failed"),
        baseline_of("resnet18", baseline=False, tag="resnet candidate"),
        baseline_of("vit_tiny", tag="vit baseline"),
        baseline_of("resnet18", TrialState.RUNNING, tag="resnet retry running"),
        baseline_of("resnet18", tag="resnet retried"),
        baseline_of("resnet18", tag="resnet later"),
    ]
    assert baseline_trial(trials, "resnet18").user_attrs["tag"] == "resnet retried"
    assert baseline_trial(trials, "vit_tiny").user_attrs["tag"] == "vit baseline"
    assert baseline_trial(trials).user_attrs["tag"] == "vit baseline"  # None: the first completed one
    assert baseline_trial(trials, "mobilenet") is None
    assert baseline_trial(trials[:2], "resnet18") is None  # a failed baseline is no baseline
    assert baseline_trial([]) is None


# -- the objective's helpers ----------------------------------------------------------------------------

def test_objective_values_follow_the_objectives_order():
    m = metrics(accuracy=0.75, latency_ms=3.5, size_mb=1.25)
    assert objective_values(m, ("accuracy", "latency", "size")) == [0.75, 3.5, 1.25]
    assert objective_values(m, ("size", "accuracy")) == [1.25, 0.75]
    assert baseline_accuracy_key("resnet18") == "baseline_accuracy:resnet18"


def make_objective(tmp_path: Path, cfg: RunConfig | None = None, plan=None, progress=None, shared=None,
                   space=None, tasks=None) -> Objective:
    cfg = cfg or RunConfig()
    plan = plan or types.SimpleNamespace(mode="measure", scorer=None, profile=None, local_device=None,
                                         measurer=None)
    return Objective(cfg, tasks or {}, space, plan, tmp_path / "run", progress or quiet_progress(cfg)[0],
                     shared)


def test_publish_copies_the_trial_folder_to_the_shared_root(tmp_path):
    import fsspec

    url = f"memory://objective-unit-{tmp_path.name}/runs"
    shared = RunsRoot(tmp_path, url)
    objective = make_objective(tmp_path, shared=shared)
    folder = tmp_path / "run" / "trials" / "0003"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    (folder / "metrics.json").write_text("{}")
    objective.publish(3)
    fs, base = fsspec.core.url_to_fs(url)
    copied = sorted(p.rsplit("/", 1)[1] for p in fs.find(f"{base}/run/trials/0003"))
    assert copied == ["metrics.json", "model.onnx"]
    assert fs.cat_file(f"{base}/run/trials/0003/model.onnx") == b"onnx bytes"
    make_objective(tmp_path).publish(3)  # no shared root: nothing to do, nothing raised


def test_baseline_accuracy_is_the_studys_record(tmp_path):
    cfg = RunConfig()
    study = new_study(None, cfg)
    trial = study.ask()
    objective = make_objective(tmp_path, cfg)
    assert objective.baseline_accuracy(trial, "resnet18") is None  # no baseline, none running
    study.set_user_attr(baseline_accuracy_key("resnet18"), 0.875)
    assert objective.baseline_accuracy(trial, "resnet18") == 0.875
    assert objective.baseline_accuracy(trial, "vit_tiny") is None


def test_baseline_accuracy_ignores_the_trial_itself_and_other_models(tmp_path):
    cfg = RunConfig()
    study = new_study(None, cfg)
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True, MODEL_ATTR: "vit_tiny"})
    other_model = study.ask()
    assert other_model.user_attrs[MODEL_ATTR] == "vit_tiny"
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True, MODEL_ATTR: "resnet18"})
    itself = study.ask()
    assert make_objective(tmp_path, cfg).baseline_accuracy(itself, "resnet18") is None


def test_baseline_accuracy_waits_for_a_baseline_running_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(objective_module, "BASELINE_POLL_S", 0.01)
    cfg = RunConfig()
    study = new_study(None, cfg)
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True, MODEL_ATTR: "resnet18"})
    elsewhere = study.ask()
    trial = study.ask()
    stages = []

    class Watching(Progress):
        def stage(self, name):
            stages.append(name)
            if len(stages) == 3:  # the other process finishes its baseline while this one waits
                study.set_user_attr(baseline_accuracy_key("resnet18"), 0.91)
                study.tell(elsewhere, [0.91, 1.0, 1.0])

    objective = make_objective(tmp_path, cfg, progress=Watching(cfg.objectives, cfg.directions))
    assert objective.baseline_accuracy(trial, "resnet18") == 0.91
    assert stages == ["waiting for the resnet18 baseline running elsewhere"] * 3


def interval(accuracy: float, low: float, point: float, high: float, size_mb: float = 0.5) -> Metrics:
    return replace(metrics(accuracy=accuracy, latency_ms=point, size_mb=size_mb),
                   latency_low_ms=low, latency_high_ms=high)


def test_hybrid_measures_exactly_the_candidates_whose_interval_straddles_the_front(tmp_path):
    """The front of feasible finished trials is (0.95 at 1.0 ms, 0.5 MB) and (0.90 at 0.5 ms, 0.5 MB);
    an infeasible trial (0.99 at 0.1 ms) does not count. Candidates at 0.92, 0.5 MB, predicted with
    different intervals: only those that may or may not join the front are measured."""
    study = new_study(None, RunConfig())
    study.add_trial(create_trial(values=[0.95, 1.0, 0.5]))
    study.add_trial(create_trial(values=[0.90, 0.5, 0.5]))
    study.add_trial(create_trial(values=[0.99, 0.1, 0.1], constraints={"max_size_mb": 1.0}))
    trial = study.ask()
    objective = make_objective(tmp_path, RunConfig())
    cases = {  # (low, point, high) -> measured?
        (0.6, 0.8, 0.9): False,  # undominated even at its slow end: joins the front whatever the truth
        (0.9, 0.95, 0.99): False,  # still undominated at 0.99 ms (0.95 needs 1.0 ms)
        (0.8, 0.9, 1.2): True,  # at 1.2 ms (0.95, 1.0 ms) dominates it, at 0.8 ms nothing does
        (0.95, 1.05, 1.2): True,  # the point estimate is dominated, the fast end is not
        (1.1, 1.2, 1.4): False,  # dominated even at its fast end: out whatever the truth
    }
    got = {ends: objective.worth_measuring(trial, interval(0.92, *ends)) for ends in cases}
    assert got == cases
    # a prediction without an interval (a calibration from before intervals): measured when its
    # point estimate is on the front
    assert objective.worth_measuring(trial, metrics(accuracy=0.92, latency_ms=1.05)) is False
    assert objective.worth_measuring(trial, metrics(accuracy=0.92, latency_ms=0.9)) is True
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    baseline = study.ask()
    assert objective.worth_measuring(baseline, interval(0.1, 8.0, 9.0, 10.0, size_mb=9.0)) is True


# -- one call, with build and evaluate replaced ------------------------------------------------------------

class Candidate:
    def __init__(self, ratio: float | None) -> None:
        self.ratio = ratio

    def label(self) -> str:
        return "baseline" if self.ratio is None else f"prune({self.ratio:g})"

    def to_dict(self) -> dict:
        return {} if self.ratio is None else {"prune": {"ratio": self.ratio}}


class Space:
    def sample(self, trial, baseline=False):
        ratio = None if baseline else trial.suggest_categorical("prune.ratio", [0.25, 0.5])
        return "resnet18", Candidate(ratio)


TASK = types.SimpleNamespace(
    data=types.SimpleNamespace(train=types.SimpleNamespace(x=torch.zeros(2, 3, 8, 8), y=torch.zeros(2)),
                               val="validation split", corrupt=SkipLog()),
    base=None, teacher=None, finetune_lr=0.01, input_shape=(1, 3, 8, 8),
)


@pytest.fixture
def replaced_steps(monkeypatch):
    """build writes a file; evaluate scores the baseline 0.9 accurate, a candidate 0.8."""
    seen = []

    def build(candidate, task, out, context, stage, screen=None, rungs=None):
        assert screen is None and rungs is None  # --fidelity off (the default) screens nothing
        assert context.lr == 0.01 and context.train.x.shape == (2, 3, 8, 8)
        stage("build")
        (out / "model.onnx").write_bytes(b"x")
        return out / "model.onnx", None

    def evaluate(path, model, task, split, scorer, stage, accuracy=None):
        seen.append(split)
        baseline = "prune" not in json.loads((path.parent / "params.json").read_text())["techniques"]
        return metrics(accuracy=0.9 if baseline else 0.8, latency_ms=1.0, size_mb=2.0 if baseline else 0.5)

    monkeypatch.setattr(objective_module, "build", build)
    monkeypatch.setattr(objective_module, "evaluate", evaluate)
    return seen


def test_a_call_records_the_trial_and_judges_it_against_the_baseline(tmp_path, replaced_steps):
    cfg = RunConfig(objectives=("size", "accuracy"), max_size_mb=1.0)
    study = optuna.create_study(directions=cfg.directions)
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    objective = make_objective(tmp_path, cfg, space=Space(), tasks={"resnet18": TASK})

    base = study.ask()
    assert objective(base) == [2.0, 0.9]
    study.tell(base, [2.0, 0.9])
    assert study.user_attrs[baseline_accuracy_key("resnet18")] == 0.9

    trial = study.ask()
    assert objective(trial) == [0.5, 0.8]
    assert replaced_steps == ["validation split"] * 2  # scored on the validation split
    attrs = trial.user_attrs
    assert (attrs[MODEL_ATTR], attrs["techniques"], attrs["artifact"]) == (
        "resnet18", f"prune({trial.params['prune.ratio']:g})", "trials/0001/model.onnx")
    assert attrs["accuracy"] == 0.8 and attrs["size_mb"] == 0.5
    # 10 points below the baseline's 0.9 with a 5-point budget; under the 1 MB size budget
    assert trial.constraints == pytest.approx({"max_accuracy_drop": 5.0, "max_size_mb": -0.5})
    folder = tmp_path / "run" / "trials" / "0001"
    params = json.loads((folder / "params.json").read_text())
    assert params == {
        "trial": 1, "model": "resnet18", "techniques": attrs["techniques"],
        "candidate": {"prune": {"ratio": trial.params["prune.ratio"]}}, "optuna_params": trial.params,
    }
    written = json.loads((folder / "metrics.json").read_text())
    assert written["split"] == "val"
    assert written["constraints"] == pytest.approx({"max_accuracy_drop": 5.0, "max_size_mb": -0.5})
    assert base.constraints == pytest.approx({"max_accuracy_drop": -5.0, "max_size_mb": 1.0})


def test_a_hybrid_call_measures_the_baseline_and_keeps_the_prediction(tmp_path, replaced_steps):
    measured = []

    class Measurer:
        def latency(self, path, input_shape):
            measured.append((path.name, input_shape))
            return Latency(median_ms=3.0, p90_ms=3.5, repeats=10, threads=1, source="measured", target="host")

    plan = types.SimpleNamespace(mode="hybrid", scorer=None, profile=None, local_device=None,
                                 measurer=Measurer())
    cfg = RunConfig()
    study = optuna.create_study(directions=cfg.directions)
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    trial = study.ask()
    values = make_objective(tmp_path, cfg, plan=plan, space=Space(), tasks={"resnet18": TASK})(trial)
    assert values == [0.9, 3.0, 2.0]
    assert measured == [("model.onnx", (1, 3, 8, 8))]
    attrs = trial.user_attrs
    assert (attrs["latency_ms"], attrs["latency_p90_ms"], attrs["latency_source"]) == (3.0, 3.5, "measured")
    assert attrs["latency_predicted_ms"] == 1.0
    assert attrs["latency_error_pct"] is None


def test_structure_fidelity_prunes_a_candidate_the_front_beats_even_at_the_ceiling(tmp_path, monkeypatch):
    """Before fine-tuning, trial 2's structure (0.6 ms, 0.5 MB) is beaten by trial 1 (0.95, 0.5 ms,
    0.5 MB) even at the ceiling 0.905 (baseline 0.9 + 0.5 points): PRUNED with trial 1 named. Trial 1
    was screened too, and went on: the baseline (0.9) cannot beat a candidate credited with 0.905."""
    timed = iter([0.5, 0.6])  # the structures' latencies, trials 1 and 2
    scored = {0: metrics(0.9, 1.0, 2.0), 1: metrics(0.95, 0.5, 0.5)}

    class Scorer:
        def latency(self, path, input_shape):
            return Latency(median_ms=next(timed), p90_ms=1.0, repeats=1, threads=1, source="measured",
                           target="host")

    def build(candidate, task, out, context, stage, screen=None, rungs=None):
        assert rungs is None  # structure only
        if screen is not None:
            structure = out / "structure" / "model.onnx"
            structure.parent.mkdir()
            structure.write_bytes(b"x" * 500_000)  # 0.5 MB
            screen(structure)
        (out / "model.onnx").write_bytes(b"x")
        return out / "model.onnx", None

    monkeypatch.setattr(objective_module, "build", build)
    monkeypatch.setattr(objective_module, "evaluate", lambda path, *_, **__: scored[int(path.parent.name)])
    cfg = RunConfig(fidelity="structure")
    plan = types.SimpleNamespace(mode="measure", scorer=Scorer(), profile=None, local_device=None,
                                 measurer=None)
    study = optuna.create_study(directions=cfg.directions)
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    for ratio in (0.25, 0.5):  # two different candidates (the same one twice is a duplicate, not built)
        study.enqueue_trial({"prune.ratio": ratio})
    objective = make_objective(tmp_path, cfg, plan=plan, space=Space(), tasks={"resnet18": TASK})
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, objective(trial))
    trial = study.ask()
    beaten = r"beaten before fine-tuning by trial 1 even at accuracy 0\.9050"
    with pytest.raises(optuna.TrialPruned, match=beaten):
        objective(trial)
    attrs = trial.user_attrs
    assert attrs["latency_ms"] == 0.6 and attrs["size_mb"] == pytest.approx(0.5)
    assert attrs["artifact"] == "trials/0002/structure/model.onnx" and trial.constraints == {}
    assert next(timed, None) is None  # the baseline was not screened, trials 1 and 2 were
