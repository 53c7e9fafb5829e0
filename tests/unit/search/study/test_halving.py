"""Successive halving (``--fidelity halving``): the rungs, NSGA-II's order at a rung, the promotion
rule on a synthetic study with known values, and the objective's rung judge (build and scoring
replaced: nothing trains here)."""

from __future__ import annotations

import json
import math
import types

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.candidate.build import Rungs
from search.config.run_config import RunConfig
from search.front.pareto import crowding_distance, nondominated_order
from search.study import objective as objective_module
from search.study.constraints import PRUNED_ATTR
from search.study.halving import RUNG_ATTR, RUNG_STOP_ATTR, judge, rungs
from search.study.objective import full_budget
from search.task.data import SkipLog
from spaces import Candidate, Step
from targets import Latency
from tests.unit.search.study.test_objective_unit import make_objective

MAX = ["maximize", "minimize", "minimize"]  # accuracy, latency, size


@pytest.mark.parametrize(("top", "expected"), [
    (15, (1, 3, 9, 15)), (9, (1, 3, 9)), (10, (1, 3, 9, 10)), (1, (1,)), (2, (1, 2)), (60, (1, 3, 9, 27, 60)),
])
def test_rungs_grow_by_eta_up_to_the_full_budget(top, expected):
    assert rungs(top) == expected
    segments = Rungs(expected, lambda *_: None).segments
    assert sum(segments) == top and all(s > 0 for s in segments)


def test_rungs_refuse_a_budget_below_one_epoch():
    with pytest.raises(ValueError, match="top >= 1"):
        rungs(0)


def test_nondominated_order_is_rank_then_crowding():
    points = [
        [0.90, 1.0, 1.0],  # 0: front
        [0.80, 2.0, 2.0],  # 1: dominated by 0 and by 2: last rank
        [0.85, 1.5, 1.5],  # 2: dominated by 0 only: second rank
        [0.95, 3.0, 3.0],  # 3: front (most accurate)
        [0.70, 0.5, 0.5],  # 4: front (fastest, smallest)
        [0.92, 2.0, 2.0],  # 5: front, between 0 and 3
    ]
    order = nondominated_order(points, MAX)
    assert set(order[:4]) == {0, 3, 4, 5} and order[4:] == [2, 1]
    # within the front the extremes (3: best accuracy; 4: best latency and size) come first
    assert set(order[:2]) == {3, 4}


def test_crowding_distance_by_hand():
    front = torch.tensor([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]]).numpy()
    got = crowding_distance(front)
    assert math.isinf(got[0]) and math.isinf(got[3])
    assert got[1] == pytest.approx(3 / 4 + 3 / 4) and got[2] == pytest.approx(3 / 4 + 2 / 4)


def test_nothing_goes_on_before_eta_candidates_reached_the_rung():
    first = judge([0.5, 9.0, 9.0], [], MAX)
    assert (first.rank, first.peers, first.keep, first.promoted) == (1, 1, 0, False)
    second = judge([0.9, 1.0, 1.0], [[0.5, 9.0, 9.0]], MAX)  # dominates the first, still only 2 of 3
    assert (second.rank, second.keep, second.promoted) == (1, 0, False)
    third = judge([0.95, 1.0, 1.0], [[0.5, 9.0, 9.0], [0.9, 1.0, 1.0]], MAX)
    assert (third.rank, third.keep, third.promoted) == (1, 1, True)


def test_promotion_on_a_synthetic_rung():
    """Six candidates at one rung with known values; each is judged when it arrives, against the ones
    that arrived before it (asynchronously), and the top floor(n/3) go on."""
    arrivals = [
        [0.60, 1.0, 1.0],  # alone: keep 0 of 1, stays
        [0.50, 1.0, 1.0],  # dominated by the first, keep 0 of 2: stays
        [0.70, 1.0, 1.0],  # dominates both, keep 1 of 3: goes on
        [0.40, 0.2, 0.2],  # front with 0.70, both extremes (infinite crowding): the tie goes to 0.70
        [0.55, 1.0, 1.0],  # dominated by 0.60 and 0.70, keep 1 of 5: stays
        [0.72, 0.9, 0.9],  # dominates 0.70: front with 0.40, the tie to 0.40; rank 2 of 6, keep 2: goes on
    ]
    verdicts = [judge(arrivals[i], arrivals[:i], MAX) for i in range(len(arrivals))]
    assert [v.rank for v in verdicts] == [1, 2, 1, 2, 4, 2]
    assert [v.keep for v in verdicts] == [0, 0, 1, 1, 1, 2]
    assert [v.promoted for v in verdicts] == [False, False, True, False, False, True]


def test_a_tie_goes_to_the_peer_that_arrived_first():
    """Two extremes of a two-point front are equally (infinitely) crowded: the newcomer ranks second,
    whichever of the two it is."""
    fast, accurate = [0.5, 0.1, 0.1], [0.9, 1.0, 1.0]
    assert judge(fast, [accurate], MAX).rank == 2 and judge(accurate, [fast], MAX).rank == 2
    assert not judge(fast, [accurate], MAX).promoted


DISTILL = Step("distill", {"epochs": 4, "temperature": 4.0, "alpha": 0.5})
PRUNE = Step("prune", {"ratio": 0.5, "importance": "l2", "scope": "uniform", "residual": "keep"})


def test_full_budget_raises_the_epochs_to_the_baselines_training_length():
    candidate, schedule = full_budget(Candidate((PRUNE, DISTILL)), training_epochs=15)
    assert schedule == (1, 3, 9, 15)
    assert candidate.to_dict()["distill"]["epochs"] == 15 and candidate.steps[0] == PRUNE
    # a short baseline (a pretrained start: 2 epochs) keeps the space's own bound
    assert full_budget(Candidate((DISTILL,)), training_epochs=2)[1] == (1, 3, 4)
    # nothing trains: nothing to halve
    assert full_budget(Candidate((PRUNE,)), training_epochs=15) == (Candidate((PRUNE,)), None)


# -- the objective's judge -----------------------------------------------------------------------

TASK = types.SimpleNamespace(
    data=types.SimpleNamespace(train=types.SimpleNamespace(x=torch.zeros(2, 3, 8, 8), y=torch.zeros(2)),
                               val="validation split", corrupt=SkipLog()),
    base=None, teacher=None, finetune_lr=0.01, input_shape=(1, 3, 8, 8), training_epochs=9,
)


class OneSpace:
    """Candidates that prune by ``prune.ratio`` then distil (the epochs fixed at 4)."""

    def sample(self, trial, baseline=False):
        if baseline:
            return "resnet18", Candidate()
        ratio = trial.suggest_float("prune.ratio", 0.1, 0.9)
        return "resnet18", Candidate((Step("prune", {**PRUNE.params, "ratio": ratio}), DISTILL))


@pytest.fixture
def rung_run(tmp_path, monkeypatch):
    """A halving run whose builds write files and call the screen, then the rung judge at each rung;
    the rung accuracy of trial N at epochs E is ``accuracy[N][E]``; latency and size come from the
    structure (1 ms, 0.5 MB)."""
    accuracy: dict[int, dict[int, float]] = {}
    calls: list[tuple[int, int]] = []

    class Scorer:
        def latency(self, path, input_shape):
            return Latency(median_ms=1.0, p90_ms=1.0, repeats=1, threads=1, source="measured", target="host")

    def build(candidate, task, out, context, stage, screen=None, rungs=None):
        number = int(out.name)
        if screen is not None:
            (out / "structure").mkdir()
            (out / "structure" / "model.onnx").write_bytes(b"x" * 500_000)
            screen(out / "structure" / "model.onnx")
        if rungs is not None:
            assert candidate.to_dict()["distill"]["epochs"] == rungs.schedule[-1] == 9
            for epochs in rungs.schedule[:-1]:
                where = out / f"rung-{epochs}"
                where.mkdir()
                (where / "model.onnx").write_bytes(str(number).encode())
                calls.append((number, epochs))
                if not rungs.judge(epochs, where / "model.onnx"):
                    return where / "model.onnx", None
        (out / "model.onnx").write_bytes(b"x")
        return out / "model.onnx", None

    def onnx_accuracy(path, split):
        assert split == "validation split"
        return accuracy[int(path.read_bytes())][int(path.parent.name.split("-")[1])]

    monkeypatch.setattr(objective_module, "build", build)
    monkeypatch.setattr(objective_module, "onnx_accuracy", onnx_accuracy)
    monkeypatch.setattr(objective_module, "evaluate", lambda path, *_: pytest.fail("not reached here"))
    cfg = RunConfig(fidelity="halving")
    plan = types.SimpleNamespace(mode="measure", scorer=Scorer(), profile=None, local_device=None,
                                 measurer=None)
    study = optuna.create_study(directions=cfg.directions)
    objective = make_objective(tmp_path, cfg, plan=plan, space=OneSpace(), tasks={"resnet18": TASK})
    return types.SimpleNamespace(study=study, objective=objective, accuracy=accuracy, calls=calls)


def add_rung_peers(study: optuna.Study, accuracies: tuple[float, ...], epochs: int = 1) -> None:
    """Finished trials that reached rung ``epochs`` with these accuracies (1 ms, 0.5 MB), and the
    baseline's."""
    for acc in accuracies:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, user_attrs={RUNG_ATTR.format(epochs=epochs): {
                "accuracy": acc, "latency": 1.0, "size": 0.5}}))
    study.set_user_attr("baseline_accuracy:resnet18", 0.95)


def scored(accuracy: float) -> objective_module.Metrics:
    """What ``evaluate`` gives a file of ``accuracy`` (1 ms, 0.5 MB)."""
    return objective_module.Metrics(
        accuracy=accuracy, latency_ms=1.0, latency_p90_ms=1.0, latency_source="measured",
        latency_error_pct=None, size_mb=0.5, compressed_mb=0.25, params=10, macs=100, sparsity=0.0,
    )


def test_a_candidate_ranked_out_at_a_rung_is_kept_as_its_rungs_model(rung_run, monkeypatch):
    """Two peers already reached rung 1 (0.9 and 0.8 accuracy, same latency and size); the third
    arrives at 0.7: rank 3 of 3, only the top 1 goes on, so it trains no further than 1 epoch of 9.
    Its rung's file is a finished 1-epoch recovery: scored like any result, and the trial's model."""
    study = rung_run.study
    add_rung_peers(study, (0.9, 0.8))
    rung_run.accuracy[2] = {1: 0.7, 3: 0.99}
    evaluated = []
    monkeypatch.setattr(objective_module, "evaluate",
                        lambda path, *_, accuracy=None: evaluated.append((path, accuracy)) or scored(0.7))
    trial = study.ask()
    assert trial.number == 2
    assert rung_run.objective(trial) == [0.7, 1.0, 0.5]
    assert rung_run.calls == [(2, 1)]  # never reached rung 3
    folder = rung_run.objective.run_dir / "trials" / "0002"
    # the rung's file, with the accuracy the rung scored it at (not scored a second time)
    assert evaluated == [(folder / "rung-1" / "model.onnx", 0.7)]
    attrs = trial.user_attrs
    assert attrs[RUNG_ATTR.format(epochs=1)] == {"accuracy": 0.7, "latency": 1.0, "size": pytest.approx(0.5)}
    assert attrs["recovery_epochs"] == 1 and attrs["artifact"] == "trials/0002/rung-1/model.onnx"
    assert attrs[RUNG_STOP_ATTR] == ("kept at 1 of 9 fine-tuning epochs: rank 3 of 3 at this rung, the top 1 "
                                     "go on (successive halving, eta 3)")
    assert attrs["candidate"]["distill"]["epochs"] == 1 and "distill(1ep" in attrs["techniques"]
    record = json.loads((folder / "params.json").read_text())
    assert record["candidate"]["distill"]["epochs"] == 1  # the file says what model it is
    assert PRUNED_ATTR not in attrs


def test_a_candidate_that_ranks_first_at_every_rung_trains_the_full_budget(rung_run, monkeypatch):
    study = rung_run.study
    add_rung_peers(study, (0.5, 0.6))
    add_rung_peers(study, (0.55, 0.65), epochs=3)
    rung_run.accuracy[4] = {1: 0.9, 3: 0.93}
    accuracies = []
    monkeypatch.setattr(objective_module, "evaluate",
                        lambda path, *_, accuracy=None: accuracies.append(accuracy) or scored(0.94))
    trial = study.ask()
    assert rung_run.objective(trial) == [0.94, 1.0, 0.5]
    assert accuracies == [None]  # the top rung's file was never scored: evaluate scores it
    assert rung_run.calls == [(4, 1), (4, 3)]
    assert trial.user_attrs["recovery_epochs"] == 9
    assert trial.user_attrs[RUNG_ATTR.format(epochs=3)]["accuracy"] == 0.93
    assert trial.user_attrs["candidate"]["distill"]["epochs"] == 9
