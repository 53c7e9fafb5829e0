"""The engine's ask/tell loop (``_loop``) on an Optuna study (in memory, or SQLite as a run's ``study.db``)
with a lightweight objective, and the checks ``run_search`` / ``resume_search`` make before anything is
trained or written."""

from __future__ import annotations

import socket
import types
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import create_trial

from search.config.run_config import RunConfig
from search.core.errors import CandidateError, UserError
from search.study import engine
from search.study.cluster import OWNER_ATTR, finished_count, owner, requeue
from search.study.interrupt import Interrupts
from search.study.objective import BASELINE_ATTR
from tests.support.studies import FakeObjective, dead_pid, new_study, quiet_progress

#: A loop that never reaches its budget waits forever: fail it well before the suite's default.
pytestmark = pytest.mark.timeout(120)

DIST = {
    "x": optuna.distributions.FloatDistribution(0.0, 1.0),
    "y": optuna.distributions.IntDistribution(1, 8),
}


def loop(cfg: RunConfig, tmp_path: Path, behaviour=None, study=None, **kw):
    """Run ``_loop`` on a fresh in-memory (or the given) study; returns (ran, study, objective, log)."""
    if study is None:
        study = new_study(None, cfg)
    objective = FakeObjective(cfg, tmp_path / "run", behaviour)
    progress, stream = quiet_progress(cfg)
    ran = engine._loop(cfg, study, objective, progress, Interrupts(), **kw)
    return ran, study, objective, stream.getvalue()


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


# -- the loop -------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["sqlite", "memory"])
def test_loop_runs_exactly_the_budget_and_tells_the_objectives_values(tmp_path, storage):
    cfg = RunConfig(trials=5)
    study = new_study(tmp_path if storage == "sqlite" else None, cfg)
    ran, study, objective, log = loop(cfg, tmp_path, study=study)
    assert ran == 5
    assert finished_count(study) == 5
    assert states(study) == ["COMPLETE"] * 5
    assert objective.calls == [0, 1, 2, 3, 4]
    assert objective.published == [0, 1, 2, 3, 4]
    for t in study.get_trials():
        x, y = t.params["x"], t.params["y"]
        assert t.values == pytest.approx([x, float(y), x * y])
        assert t.user_attrs[OWNER_ATTR] == owner()
    assert [f"[{i}/5 " in log for i in range(1, 6)] == [True] * 5


def test_loop_counts_failed_trials_and_records_their_reasons(tmp_path):
    def odd_fails(trial):
        if trial.number % 2:
            raise CandidateError(f"odd trial {trial.number}")
        return None

    ran, study, _, log = loop(RunConfig(trials=5), tmp_path, odd_fails)
    assert ran == 5
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE", "FAIL", "COMPLETE"]
    assert finished_count(study) == 5
    assert study.trials[1].user_attrs["fail_reason"] == "CandidateError: odd trial 1"
    assert "FAIL CandidateError: odd trial 3" in log


def test_loop_counts_trials_already_in_storage(tmp_path):
    cfg = RunConfig(trials=5)
    study = new_study(None, cfg)
    for i in range(3):
        params = {"x": 0.5, "y": 2 + i}
        study.add_trial(create_trial(values=[0.5, 2.0, 1.0], params=params, distributions=DIST))
    ran, study, objective, _ = loop(cfg, tmp_path, study=study)
    assert ran == 2
    assert objective.calls == [3, 4]
    assert finished_count(study) == 5


def test_loop_stops_at_the_timeout_between_trials(tmp_path, monkeypatch):
    clock = types.SimpleNamespace(now=1000.0, sleep=lambda s: None)
    clock.monotonic = lambda: clock.now
    monkeypatch.setattr(engine, "time", clock)

    def ten_seconds(trial):
        clock.now += 10.0
        return None

    ran, study, _, log = loop(RunConfig(trials=100, timeout=25), tmp_path, ten_seconds)
    assert ran == 3  # 10 and 20 s are under 25 s, so a third trial starts; after it, 30 s is not
    assert finished_count(study) == 3
    assert "timeout of 25 s reached after 3 trials" in log


def test_baseline_failure_stops_the_run_with_a_user_error(tmp_path):
    cfg = RunConfig(trials=5)
    study = new_study(None, cfg)
    study.enqueue_trial({"x": 0.25, "y": 3}, user_attrs={BASELINE_ATTR: True})

    def baseline_breaks(trial):
        if trial.user_attrs.get(BASELINE_ATTR):
            raise CandidateError("cannot export the base model")
        return None

    with pytest.raises(UserError) as err:
        loop(cfg, tmp_path, baseline_breaks, study=study)
    assert str(err.value) == (
        "the uncompressed baseline failed, nothing to compare: CandidateError: cannot export the base model"
    )
    assert states(study) == ["FAIL"]  # told before the run stopped
    assert study.trials[0].params == {"x": 0.25, "y": 3}


def test_a_worker_goes_on_after_a_failed_baseline(tmp_path):
    cfg = RunConfig(trials=3)
    study = new_study(None, cfg)
    study.enqueue_trial({"x": 0.25, "y": 3}, user_attrs={BASELINE_ATTR: True})

    def baseline_breaks(trial):
        if trial.user_attrs.get(BASELINE_ATTR):
            raise CandidateError("cannot export the base model")
        return None

    ran, study, _, _ = loop(cfg, tmp_path, baseline_breaks, study=study, stop_on_baseline_failure=False)
    assert ran == 3
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]


def test_a_user_error_in_a_trial_ends_the_loop_and_leaves_the_trial_untold(tmp_path):
    def unusable(trial):
        raise UserError("agent refused the token")

    cfg = RunConfig(trials=4)
    study = new_study(None, cfg)
    with pytest.raises(UserError, match="agent refused the token"):
        loop(cfg, tmp_path, unusable, study=study)
    assert states(study) == ["RUNNING"]


@pytest.mark.parametrize("raises", [True, False], ids=["swallowed-as-error", "swallowed-entirely"])
def test_a_swallowed_ctrl_c_stops_the_loop_and_leaves_the_trial_running(tmp_path, raises):
    cfg = RunConfig(trials=4)
    study = new_study(None, cfg)
    interrupts = Interrupts()

    def ctrl_c(trial):
        interrupts.requested = True  # as the SIGINT handler does, before a library hides the exception
        if raises:
            raise RuntimeError("KeyboardInterrupt caught by the exporter")
        return None

    objective = FakeObjective(cfg, tmp_path / "run", ctrl_c)
    progress, _ = quiet_progress(cfg)
    with pytest.raises(KeyboardInterrupt):
        engine._loop(cfg, study, objective, progress, interrupts)
    assert states(study) == ["RUNNING"]  # never told: resume re-queues it
    assert objective.calls == [0]


def test_loop_waits_for_the_last_trials_running_elsewhere(tmp_path, monkeypatch):
    cfg = RunConfig(trials=2)
    study = new_study(None, cfg)
    elsewhere = study.ask(DIST)
    elsewhere.set_user_attr(OWNER_ATTR, owner())  # a live process: not an orphan
    waits = []

    def other_process_finishes(seconds):
        waits.append(seconds)
        study.tell(elsewhere, [0.5, 1.0, 0.5])

    monkeypatch.setattr(engine, "time", types.SimpleNamespace(
        monotonic=engine.time.monotonic, sleep=other_process_finishes))
    ran, study, objective, _ = loop(cfg, tmp_path, study=study)
    assert ran == 1
    assert objective.calls == [1]
    assert waits == [engine.WAIT_S]
    assert states(study) == ["COMPLETE", "COMPLETE"]


def test_loop_requeues_and_reruns_a_trial_whose_worker_died(tmp_path):
    cfg = RunConfig(trials=2)
    study = new_study(None, cfg)
    orphan = study.ask(DIST)
    orphan.set_user_attr(OWNER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
    ran, study, objective, log = loop(cfg, tmp_path, study=study)
    trials = study.get_trials()
    assert ran == 2
    assert "re-queued trial(s) 0: their worker stopped mid-trial" in log
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["interrupted"] is True
    assert trials[1].params == trials[0].params
    assert trials[1].user_attrs["retry_of"] == 0
    assert objective.calls == [1, 2]
    assert finished_count(study) == 2  # the interrupted trial does not count


def test_a_trial_requeued_by_another_process_meanwhile_is_dropped(tmp_path):
    def requeued_meanwhile(trial):
        if trial.number == 0:
            requeue(trial.study, trial.study._storage.get_trial(trial._trial_id), "no heartbeat seen")
        return None

    ran, study, objective, log = loop(RunConfig(trials=1), tmp_path, requeued_meanwhile)
    trials = study.get_trials()
    assert "dropped: another process re-queued trial 0 meanwhile" in log
    assert ran == 2
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"] == "no heartbeat seen"
    assert trials[1].user_attrs["retry_of"] == 0
    assert trials[1].params == trials[0].params
    assert finished_count(study) == 1


def test_a_trial_requeued_by_another_process_while_it_is_told_is_dropped(tmp_path, monkeypatch):
    cfg = RunConfig(trials=1)
    study = new_study(None, cfg)
    storage = study._storage
    write = storage.set_trial_state_values
    raced = []

    def other_process_requeues_first(trial_id, state, values=None):
        if state.is_finished() and not raced:  # the tell's write of trial 0, after its check
            raced.append(trial_id)
            requeue(study, storage.get_trial(trial_id), "no heartbeat seen")
        return write(trial_id, state, values)

    monkeypatch.setattr(storage, "set_trial_state_values", other_process_requeues_first)
    ran, study, _, log = loop(cfg, tmp_path, study=study)
    assert raced == [study.trials[0]._trial_id]
    assert "dropped: another process re-queued trial 0 meanwhile" in log
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "COMPLETE"]
    assert ran == 2


# -- run.yaml -------------------------------------------------------------------------------------

CONFIGS = {
    "defaults": RunConfig(name="plain"),
    "everything-set": RunConfig(
        name="full.run-1", runs_dir="/srv/runs", model="resnet18,mobilenetv3_small_050", img_size=48,
        objectives=("accuracy", "size"), sampler="nsga2", sampler_seed=7, trials=12, timeout=90.5,
        trial_timeout=30.0, min_accuracy=0.9, max_accuracy_drop=None, max_latency_ms=4.5,
        max_size_mb=2.0, target="rpi4", latency="predict", threads=2, repeats=20, backend="ray",
        max_concurrent=3, cpus_per_trial=2, gpus_per_trial=0.5, warm_start=False, epochs=0, lr=0.01,
    ),
}


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_config_yaml_round_trips_through_run_config(cfg):
    text = engine.config_yaml(cfg)
    assert RunConfig.from_dict(yaml.safe_load(text)) == cfg
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments[0] == f"# edgepareto run {cfg.name}: every setting (config file, flags, defaults)."
    assert f"--config {Path(cfg.runs_dir) / cfg.name / 'run.yaml'} --name NEW_NAME" in comments[1]


def write_run(runs: Path, cfg: RunConfig) -> Path:
    run = runs / cfg.name
    run.mkdir(parents=True)
    (run / "run.yaml").write_text(engine.config_yaml(cfg))
    return run


def test_resume_rejects_changes_outside_resumable(tmp_path):
    write_run(tmp_path, RunConfig(name="r1", runs_dir=str(tmp_path)))
    with pytest.raises(UserError) as err:
        engine.resume_search("r1", str(tmp_path), quiet=True, trials=9, model="vit_tiny", epochs=3)
    assert str(err.value) == "--resume cannot change epochs, model"


def test_resume_takes_the_resumable_changes(tmp_path, monkeypatch):
    write_run(tmp_path, RunConfig(name="r2", runs_dir=str(tmp_path), trials=5))
    seen = {}

    class Reached(Exception):
        pass

    def stop_here(run, cfg):  # the step after the settings are checked and applied
        seen["cfg"] = cfg
        raise Reached

    monkeypatch.setattr(engine, "load_space", stop_here)
    with pytest.raises(Reached):
        engine.resume_search("r2", str(tmp_path), quiet=True, trials=9, timeout=60.0, trial_timeout=None)
    assert seen["cfg"] == RunConfig(name="r2", runs_dir=str(tmp_path), trials=9, timeout=60.0)
    assert set(engine.RESUMABLE) == {
        "trials", "timeout", "trial_timeout", "ray_address", "max_concurrent", "cpus_per_trial", "ca_file",
    }


def test_resume_of_a_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"no run 'ghost' in .*missing .*ghost/run\.yaml"):
        engine.resume_search("ghost", str(tmp_path), quiet=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_search_refuses_an_existing_run_without_touching_it(tmp_path):
    run = write_run(tmp_path, RunConfig(name="taken", runs_dir=str(tmp_path), trials=3))
    (run / "study.db").write_bytes(b"not really a database")
    before, mtimes = snapshot(tmp_path), {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(UserError) as err:
        engine.run_search(RunConfig(name="taken", runs_dir=str(tmp_path), model="test_resnet", trials=3))
    assert str(err.value) == (
        f"run 'taken' already exists in {tmp_path}; continue it with --resume taken or choose another --name"
    )
    assert snapshot(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == mtimes


def test_run_search_refuses_sqlite_on_a_shared_fsspec_runs_dir(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    monkeypatch.setenv("EDGEPARETO_STAGING", str(staging))
    with pytest.raises(UserError, match=r"shared through fsspec: the study needs a database server"):
        engine.run_search(RunConfig(name="s", runs_dir="memory://edgepareto-engine-unit/runs"))
    assert not staging.exists()  # nothing was written


def test_run_locates_its_folder_and_default_storage(tmp_path, monkeypatch):
    run = engine.Run.at("r", tmp_path)
    assert (run.dir, run.shared) == (tmp_path / "r", None)
    assert run.storage_url(RunConfig()) == f"sqlite:///{(tmp_path / 'r' / 'study.db').resolve()}"
    assert run.storage_url(RunConfig(storage="postgresql://u@h/db")) == "postgresql://u@h/db"
    monkeypatch.setenv("EDGEPARETO_STAGING", str(tmp_path / "stage"))
    shared = engine.Run.at("r", "memory://bucket/runs")
    assert shared.root == tmp_path / "stage"
    assert shared.shared is not None and shared.shared.url == "memory://bucket/runs"
    assert shared.mirror is shared.shared
