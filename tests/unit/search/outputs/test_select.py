"""Automatic model selection over a synthetic run: budget met, nothing fits, ties; CLI and API agree."""

import json
from pathlib import Path

import pandas as pd
import pytest

from search import load_run
from search.cli.main import EXIT_NO_FIT
from search.core.errors import UserError
from search.outputs.selection import Budget, select
from tests.support.cli import run_cli

#: trial, role, test accuracy, latency ms, size MB (a made-up front: faster models are less accurate)
FRONT = [
    (0, "baseline", 0.980, 10.0, 40.0),
    (3, "pareto", 0.975, 6.0, 12.0),
    (7, "pareto", 0.960, 4.0, 10.0),
    (9, "pareto", 0.960, 4.0, 8.0),  # ties trial 7 on accuracy and latency, smaller
    (12, "pareto", 0.930, 2.5, 11.0),
    (15, "pareto", 0.930, 2.5, 11.0),  # an exact tie of trial 12: the lower trial number wins
]


def frame(rows=FRONT) -> pd.DataFrame:
    return pd.DataFrame([
        {"trial": t, "model": "resnet18", "role": role, "techniques": f"recipe {t}", "test_accuracy": acc,
         "latency_ms": lat, "latency_source": "measured", "size_mb": size,
         "path": f"trials/{t:04d}/model.onnx"}
        for t, role, acc, lat, size in rows
    ])


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    """A run folder holding only the result files that ``select`` reads."""
    run = tmp_path / "runs" / "synthetic"
    run.mkdir(parents=True)
    frame().to_csv(run / "pareto.csv", index=False)
    trials = pd.DataFrame({"trial": [t for t, *_ in FRONT], "state": "COMPLETE"})
    trials.to_csv(run / "trials.csv", index=False)
    (run / "summary.json").write_text(json.dumps({"run": "synthetic", "config": {"name": "synthetic"}}))
    return run


@pytest.mark.parametrize(
    ("budget", "prefer", "trial"),
    [
        (Budget(), "accuracy", 0),  # no limits: the most accurate
        (Budget(max_latency_ms=5.0), "accuracy", 9),  # 7 and 9 tie on accuracy and latency: smaller wins
        (Budget(max_latency_ms=6.0), "accuracy", 3),  # a limit met exactly counts as met
        (Budget(max_latency_ms=5.0, max_size_mb=9.0), "accuracy", 9),
        (Budget(max_size_mb=11.5), "accuracy", 9),
        (Budget(min_accuracy=0.95), "latency", 9),  # 7 and 9 tie on latency and accuracy: 9 is smaller
        (Budget(min_accuracy=0.90), "latency", 12),  # 12 and 15 tie on everything: lower trial number
        (Budget(min_accuracy=0.90), "size", 9),
        (Budget(max_latency_ms=3.0), "size", 12),
    ],
)
def test_best_model_within_the_budget(budget, prefer, trial):
    choice = select(frame(), budget, prefer)
    assert choice.fits and choice.trial == trial
    assert not choice.shortfalls and choice.candidates >= 1
    assert f"trial {trial} " in choice.message()


def test_ties_do_not_depend_on_row_order():
    shuffled = frame(list(reversed(FRONT)))
    for prefer in ("accuracy", "latency", "size"):
        for budget in (Budget(), Budget(max_latency_ms=5.0), Budget(min_accuracy=0.9)):
            assert select(shuffled, budget, prefer).trial == select(frame(), budget, prefer).trial


def test_nothing_fits_gives_the_closest_model():
    choice = select(frame(), Budget(max_latency_ms=2.0, min_accuracy=0.9))
    assert not choice.fits and choice.candidates == 0
    assert choice.trial == 12  # 25% over the latency limit; every other model misses by more
    assert choice.shortfalls == {"max_latency_ms": pytest.approx(0.25)}
    assert "no Pareto model fits latency <= 2 ms, accuracy >= 90%" in choice.message()
    assert "closest is trial 12" in choice.message() and "latency 25.0% off" in choice.message()
    # two limits: the smallest summed relative shortfall. Trial 12 is 4.1% short of the accuracy,
    # trials 7 and 9 miss both (33% + 1%), trial 3 is 100% over the latency, the baseline 233%.
    choice = select(frame(), Budget(max_latency_ms=3.0, min_accuracy=0.97))
    assert not choice.fits and choice.trial == 12
    assert choice.shortfalls == {"min_accuracy": pytest.approx(1 - 0.93 / 0.97)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_latency_ms": 0}, "--max-latency-ms must be a positive number"),
        ({"max_size_mb": -1.0}, "--max-size-mb must be a positive number"),
        ({"min_accuracy": 97.0}, "fraction"),
        ({"max_latency_ms": float("nan")}, "--max-latency-ms"),
    ],
)
def test_bad_budgets(kwargs, message):
    with pytest.raises(UserError, match=message):
        Budget(**kwargs)


def test_cli_and_api_give_the_same_answer(synthetic_run, capfd):
    runs = str(synthetic_run.parent)
    run = load_run(synthetic_run)
    assert list(run.pareto["trial"]) == [t for t, *_ in FRONT]
    code, out, err = run_cli(
        ["select", "synthetic", "--runs-dir", runs, "--max-latency-ms", "5", "--json"], capfd
    )
    assert code == 0, err
    answer = json.loads(out)
    api = run.select(max_latency_ms=5.0)
    assert answer["fits"] and answer["model"]["trial"] == api.trial == 9
    assert answer["model"] == api.model and answer["limits"] == {"max_latency_ms": 5.0}
    code, out, _ = run_cli(["select", "synthetic", "--runs-dir", runs, "--prefer", "size"], capfd)
    assert code == 0 and "trial 9 (recipe 9)" in out and "model: trials/0009/model.onnx" in out


def test_cli_exits_3_with_the_closest_model_when_nothing_fits(synthetic_run, capfd, tmp_path):
    runs = str(synthetic_run.parent)
    args = ["select", "synthetic", "--runs-dir", runs, "--max-latency-ms", "1", "--min-accuracy", "0.99"]
    code, out, _ = run_cli(args, capfd)
    assert code == EXIT_NO_FIT == 3
    assert "no Pareto model fits" in out and "closest is trial" in out
    code, out, err = run_cli([*args, "--json", "--copy-to", str(tmp_path / "out")], capfd)
    assert code == 3 and json.loads(out)["fits"] is False and json.loads(out)["copied_to"] is None
    assert "nothing copied" in err and not (tmp_path / "out").exists()


def test_cli_refusals(synthetic_run, capfd):
    runs = str(synthetic_run.parent)
    for args, message in [
        (["select", "nope", "--runs-dir", runs], "no run at"),
        (["select", "../synthetic", "--runs-dir", runs], "run name"),
        (["select", "synthetic", "--runs-dir", runs, "--prefer", "speed"], "invalid choice"),
        (["select", "synthetic", "--runs-dir", runs, "--min-accuracy", "97"], "fraction"),
    ]:
        code, _, err = run_cli(args, capfd)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_select_on_a_real_run_copies_the_chosen_model(finished_run, tmp_path, capfd):
    """On a finished search: the choice is the API's, within the budget, and --copy-to exports it."""
    run = load_run(finished_run)
    limit = float(run.pareto["size_mb"].median())
    api = run.select(max_size_mb=limit, prefer="latency")
    assert api.fits and api.model["size_mb"] <= limit
    assert api.model["latency_ms"] == run.pareto.loc[run.pareto["size_mb"] <= limit, "latency_ms"].min()
    args = ["select", "finished", "--runs-dir", str(finished_run.parent), "--max-size-mb", str(limit),
            "--prefer", "latency", "--json", "--copy-to", str(tmp_path / "chosen")]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["model"]["trial"] == api.trial and answer["copied_to"] == str(tmp_path / "chosen")
    card = json.loads((tmp_path / "chosen" / "model.json").read_text())
    assert card["trial"] == api.trial
    assert (tmp_path / "chosen" / "model.onnx").read_bytes() == Path(api.model["path"]).read_bytes()


def predicted(rows: list[tuple[int, float, float, float, float]]) -> pd.DataFrame:
    """Predicted latencies: trial, test accuracy, point, low, high (ms)."""
    return pd.DataFrame([
        {"trial": t, "model": "resnet18", "role": "pareto", "techniques": f"recipe {t}", "test_accuracy": acc,
         "latency_ms": point, "latency_low_ms": low, "latency_high_ms": high,
         "latency_source": "predicted:calibrated", "size_mb": 1.0, "path": f"trials/{t:04d}/model.onnx"}
        for t, acc, point, low, high in rows
    ])


def test_select_says_whether_a_predicted_model_fits_for_sure():
    front = predicted([(1, 0.97, 4.5, 3.9, 5.6), (2, 0.95, 3.8, 3.3, 4.6), (3, 0.90, 2.0, 1.7, 2.4)])
    # 4.5 ms fits 5 ms by its point estimate only; the best that fits for sure is trial 2
    choice = select(front, Budget(max_latency_ms=5.0))
    assert choice.fits and choice.trial == 1 and choice.certainty == "estimate"
    assert choice.sure_alternative is not None and int(choice.sure_alternative["trial"]) == 2
    assert "fits only by its point estimate" in choice.message() and "trial 2" in choice.message()
    assert choice.to_dict()["certainty"] == "estimate" and choice.to_dict()["sure_alternative"] == 2
    sure = select(front, Budget(max_latency_ms=6.0))
    assert sure.trial == 1 and sure.certainty == "sure" and sure.sure_alternative is None
    assert "fits for sure" in sure.message()
    # no latency budget: nothing to be sure about
    assert select(front, Budget(max_size_mb=2.0)).certainty is None
    # a measured latency fits as measured
    measured = select(frame(), Budget(max_latency_ms=5.0))
    assert measured.certainty == "measured" and "for sure" not in measured.message()
    # an estimate without any model that fits for sure names no alternative
    only = select(front.iloc[:1], Budget(max_latency_ms=5.0))
    assert only.certainty == "estimate" and only.sure_alternative is None
