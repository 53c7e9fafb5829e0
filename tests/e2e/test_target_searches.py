"""Searches on targets other than a plain measured host: a device profile's analytic prediction, its
deployability as an Optuna constraint, and a calibrated predictor (``--latency predict`` and ``hybrid``)."""

import pandas as pd
import pytest
import yaml

from targets import create_target
from targets.profile import PROFILE_DIR
from tests.support.cli import TINY, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_search_on_a_predicted_target(runs_dir, capfd):
    args = ["search", "--runs-dir", str(runs_dir), "--name", "rpi", "--trials", "3", "--target", "rpi4",
            "--space", "quant-only", *TINY]
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    trials = pd.read_csv(runs_dir / "rpi" / "trials.csv")
    assert len(trials) == 3
    assert (trials["latency_source"] == "predicted:analytic").all() and (trials["latency_ms"] > 0).all()
    assert create_target("rpi5", threads=2).describe().startswith("rpi5:")


@pytest.mark.timeout(180)
def test_deployability_is_an_optuna_constraint_with_its_reason(runs_dir, tmp_path, capfd):
    profile = yaml.safe_load((PROFILE_DIR / "cortex-m7.yaml").read_text())
    profile.update(name="tiny-mcu", ram_bytes=2.0e+3, flash_bytes=1.0e+8)  # 2 kB RAM: nothing fits
    board = tmp_path / "tiny-mcu.yaml"
    board.write_text(yaml.safe_dump(profile))
    args = ["search", "--runs-dir", str(runs_dir), "--name", "mcu", "--trials", "3", "--target", str(board),
            "--space", "quant-only", *TINY]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    trials = pd.read_csv(runs_dir / "mcu" / "trials.csv")
    assert len(trials) == 3 and not trials["feasible"].any()
    assert trials["constraints"].str.contains('"deployable"').all()
    assert trials["infeasible_reason"].str.contains("peak activations .* exceed RAM 0.002 MB").all()
    assert (trials["latency_source"] == "predicted:analytic").all()


@pytest.mark.timeout(600)
def test_calibrate_then_predict_and_hybrid_searches(runs_dir, capfd):
    runs = runs_dir
    code, out, err = run_cli(
        ["calibrate", "--target", "host", "--samples", "12", "--model", "test_resnet", "--img-size", "16",
         "--repeats", "5", "--runs-dir", str(runs)], capfd,
    )
    assert code == 0, err
    assert "kernels" in out and "flops" in out and "<- chosen" in out and "within ±10%" in out
    (path,) = (runs / "targets" / "host-1t").glob("calibration-*.json")
    samples = pd.read_csv(path.with_suffix(".samples.csv"))
    assert len(samples) == 12 and (samples["measured_ms"] > 0).all()

    base = ["search", "--runs-dir", str(runs), "--trials", "3", "--space", "quant-only", *TINY]
    code, _, err = run_cli([*base, "--name", "pred", "--latency", "predict"], capfd)
    assert code == 0, err
    trials = pd.read_csv(runs / "pred" / "trials.csv")
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) >= 1
    assert (done["latency_source"] == "predicted:calibrated").all() and (done["latency_error_pct"] > 0).all()
    pareto = pd.read_csv(runs / "pred" / "pareto.csv")
    assert len(pareto) >= 1
    assert (pareto["latency_source"] == "predicted:calibrated").all()
    code, out, _ = run_cli(["show", "pred", "--runs-dir", str(runs)], capfd)
    assert code == 0 and "latency from" in out and "predicted ±" in out

    code, _, err = run_cli([*base, "--name", "hyb", "--latency", "hybrid"], capfd)
    assert code == 0, err
    trials = pd.read_csv(runs / "hyb" / "trials.csv")
    baseline = trials[trials["baseline"]].iloc[0]
    assert baseline["latency_source"] == "measured" and baseline["latency_predicted_ms"] > 0
    pareto = pd.read_csv(runs / "hyb" / "pareto.csv")
    assert len(pareto) >= 1
    assert (pareto["latency_source"] == "measured").all()  # the front a user gets is measured
