"""``--backend ray`` on a real local multi-node Ray cluster (``ray.cluster_utils.Cluster``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from search.study.cluster import OWNER_ATTR, finished_count
from search.study.constraints import PRUNED_ATTR
from search.study.ray_backend import NO_RESULT, NODE_ATTR
from tests.support.cli import ROOT, TINY, run_cli, run_module
from tests.support.runs import building, slow_space, wait_until

cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed: pip install ray[tune]")

pytestmark = pytest.mark.slow

TRIALS = 5


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node, one CPU each, on loopback."""
    os.environ.setdefault("RAY_local_fs_capacity_threshold", "0.999")
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def study_of(run) -> optuna.Study:
    return optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")


@pytest.mark.timeout(1200)
def test_search_on_a_two_node_ray_cluster(tmp_path, runs_dir, ray_cluster, capfd):
    runs = runs_dir
    args = ["search", "--runs-dir", str(runs), "--name", "ray", "--trials", str(TRIALS), "--backend", "ray",
            "--ray-address", ray_cluster, "--max-concurrent", "2", "--fidelity", "halving", *TINY]
    proc = run_module(args, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs / "ray"
    study = study_of(run)
    trials = study.get_trials()
    assert len(trials) == TRIALS and finished_count(study) == TRIALS  # nothing lost, nothing extra
    assert trials[0].user_attrs["baseline"] and trials[0].state == TrialState.COMPLETE
    assert len({t.user_attrs[NODE_ATTR] for t in trials}) == 2  # trials ran on both nodes
    for t in trials:  # the same records as the Optuna backend: attributes, artifacts, constraints
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        if t.state == TrialState.COMPLETE:
            assert (run / t.user_attrs["artifact"]).is_file()
            assert "max_accuracy_drop" in t.constraints and t.user_attrs["latency_source"] == "measured"
        elif t.state == TrialState.PRUNED:  # halving (or the structure screen) stopped it in the Ray trial
            assert t.user_attrs[PRUNED_ATTR] and (run / t.user_attrs["artifact"]).is_file()
        else:
            assert t.user_attrs["fail_reason"]
    # successive halving ran inside the Ray trials: rung values in the study, the full budget trained
    tuned = [t for t in trials if "distill" in t.user_attrs.get("candidate", {})]
    assert any("rung:1" in t.user_attrs for t in tuned), [t.user_attrs for t in tuned]
    for t in tuned:  # the full budget, or the rung where halving kept it (its candidate says so)
        if t.state == TrialState.COMPLETE and not t.user_attrs.get("rung_stop"):
            assert t.user_attrs["recovery_epochs"] == 4
        elif t.state == TrialState.COMPLETE:
            assert t.user_attrs["recovery_epochs"] == t.user_attrs["candidate"]["distill"]["epochs"] < 4
    assert (run / "pareto.csv").is_file()
    code, out, err = run_cli(["show", "ray", "--runs-dir", str(runs)], capfd)
    assert code == 0 and "baseline" in out, err
    # --resume goes through the same study: more trials on the same cluster
    proc = run_module(["search", "--runs-dir", str(runs), "--resume", "ray", "--trials", str(TRIALS + 1),
                       "--quiet"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert finished_count(study_of(run)) == TRIALS + 1


@pytest.mark.timeout(120)
def test_unreachable_cluster_is_one_line_error(tmp_path, capfd):
    args = ["search", "--runs-dir", str(tmp_path), "--backend", "ray", "--ray-address", "127.0.0.1:1",
            "--trials", "2", *TINY]
    code, _, err = run_cli(args, capfd)
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.timeout(900)
def test_killed_ray_worker_fails_its_trial_and_the_search_goes_on(tmp_path, runs_dir, ray_cluster):
    runs = runs_dir
    args = ["search", "--runs-dir", str(runs), "--name", "kill", "--trials", "4", "--backend", "ray",
            "--ray-address", ray_cluster, "--max-concurrent", "1", "--space", str(slow_space(tmp_path)),
            "--quiet", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "search", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    db = runs / "kill" / "study.db"

    def candidate_mid_trial():  # a candidate (not the baseline) mid-trial
        if not (runs / "kill" / "trials").is_dir():  # not before the search made its study and tables
            return None
        with contextlib.suppress(KeyError):
            running = optuna.load_study(study_name="kill", storage=f"sqlite:///{db}").get_trials(
                deepcopy=False, states=(TrialState.RUNNING,))
            return next((t for t in running if t.number > 0 and OWNER_ATTR in t.user_attrs
                         and building(runs / "kill", t.number)), None)
        return None

    def search_alive() -> None:
        assert proc.poll() is None, proc.communicate()[1][-3000:]

    victim = wait_until(candidate_mid_trial, 300, "a trial seen running", poll=0.2, alive=search_alive)
    os.kill(int(victim.user_attrs[OWNER_ATTR].rpartition(":")[2]), signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    study = study_of(runs / "kill")
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"] == NO_RESULT
    assert finished_count(study) == 4 and all(t.state != TrialState.RUNNING for t in study.trials)
