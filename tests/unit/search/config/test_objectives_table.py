"""The objectives table is the one vocabulary: every part that names an objective reads it, so adding an
objective (peak RAM, energy, ...) is one new row plus the code that measures it."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from search.candidate.evaluate import Metrics
from search.config import objectives
from search.config.objectives import OBJECTIVES, ObjectiveSpec
from search.config.run_config import RunConfig
from search.core.errors import UserError
from search.front.pareto import hypervolume_curve, normalised
from search.outputs.selection import Budget, preference, select
from search.study.objective import objective_values
from search.study.progress import Progress

#: A new objective, as one row: the zlib-compressed size, which ``Metrics`` already measures.
STORAGE = ObjectiveSpec("storage", "minimize", "compressed_mb", "compressed_mb", "compressed_mb",
                        "compressed_mb", "MB", "{:.3f}", "ratio", 1.0)


@pytest.fixture
def with_storage(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "storage", STORAGE)


def metrics(**changes) -> Metrics:
    values = dict(accuracy=0.9, latency_ms=2.0, latency_p90_ms=2.2, latency_source="measured",
                  latency_error_pct=None, size_mb=4.0, compressed_mb=1.5, params=10, macs=100, sparsity=0.0)
    return Metrics(**(values | changes))


def test_the_shipped_rows():
    assert list(OBJECTIVES) == ["accuracy", "latency", "size"]
    assert objectives.directions(["accuracy", "size"]) == ["maximize", "minimize"]
    assert OBJECTIVES["latency"].format(0.5321) == "0.532 ms"
    assert OBJECTIVES["accuracy"].format(0.5) == "0.5000"
    for spec in OBJECTIVES.values():  # every row points at a real Metrics field
        assert spec.attr in Metrics.__dataclass_fields__


def test_an_unknown_objective_is_refused_naming_the_table():
    with pytest.raises(UserError, match="choose from accuracy, latency, size") as caught:
        RunConfig(objectives=("storage",))
    assert caught.value.field == "objectives"


def test_one_new_row_reaches_config_objective_progress_selection_and_hypervolume(with_storage):
    cfg = RunConfig(objectives=("accuracy", "storage"))
    assert cfg.directions == ["maximize", "minimize"]
    assert objective_values(metrics(), cfg.objectives) == [0.9, 1.5]

    stream = io.StringIO()
    progress = Progress(cfg.objectives, cfg.directions, stream=stream)
    progress.done("ok", [0.9, 1.5])
    assert "storage 1.500 MB" in stream.getvalue()

    assert preference("storage")[0] == ("compressed_mb", True)
    pareto = pd.DataFrame({"trial": [0, 1], "test_accuracy": [0.9, 0.8], "latency_ms": [1.0, 1.0],
                           "size_mb": [2.0, 2.0], "compressed_mb": [1.0, 0.5]})
    assert select(pareto, Budget(), prefer="storage").model["trial"] == 1

    baseline = {"accuracy": 0.9, "storage": 2.0}
    point = {"accuracy": 0.88, "storage": 1.0}
    assert normalised(point, baseline, cfg.objectives) == pytest.approx((0.4, 0.5))
    point = {"accuracy": 0.9, "storage": 1.0}
    assert hypervolume_curve([None, point], baseline, cfg.objectives) == [0.0, 0.5]


def test_normalised_hypervolume_box_is_fixed_by_the_baseline():
    baseline = {"accuracy": 0.95, "latency": 2.0, "size": 10.0}
    names = ("accuracy", "latency", "size")
    # better than the baseline is clipped to the box's corner; worse than its edge adds nothing
    assert normalised({"accuracy": 0.99, "latency": 1.0, "size": 2.5}, baseline, names) == (0.0, 0.5, 0.25)
    assert normalised({"accuracy": 0.5, "latency": 4.0, "size": 20.0}, baseline, names) == (1.0, 1.0, 1.0)
    curve = hypervolume_curve(
        [{"accuracy": 0.95, "latency": 2.0, "size": 10.0},  # the baseline itself: on the edge, zero
         {"accuracy": 0.94, "latency": 1.0, "size": 5.0},  # 1 point lost (0.2), half latency and size
         None,
         {"accuracy": 0.93, "latency": 1.5, "size": 6.0}],  # dominated by the one before: flat
        baseline, names,
    )
    assert curve == pytest.approx([0.0, 0.8 * 0.5 * 0.5, 0.2, 0.2])
