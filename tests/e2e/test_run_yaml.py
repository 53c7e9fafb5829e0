"""``--config``: a config file with flags on top, and the saved run.yaml that repeats the run."""

import pandas as pd
import pytest
import yaml

from search.config.run_config import RunConfig
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.timeout(480)
def test_config_file_flags_override_and_run_yaml_reproduces(runs_dir, tmp_path, capfd):
    """``--config`` with a flag on top; the saved run.yaml is the merge, and running it again under
    another name gives the same settings and the same trials (sampled params, validation accuracy)."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": "test_resnet", "img-size": 16, "epochs": 2, "trials": 9, "max_accuracy_drop": 50.0,
        "objectives": ["accuracy", "latency"], "sampler": "random", "runs_dir": str(runs_dir),
    }))
    code, _, err = run_cli(["search", "--config", str(config), "--name", "fromfile", "--trials", "4",
                            "--quiet"], capfd)
    assert code == 0, err
    saved_text = (runs_dir / "fromfile" / "run.yaml").read_text()
    assert saved_text.startswith("# edgepareto run fromfile") and "--config" in saved_text
    saved = RunConfig.from_dict(yaml.safe_load(saved_text))
    assert saved.trials == 4 and saved.sampler == "random" and saved.objectives == ("accuracy", "latency")
    merged = {**yaml.safe_load(config.read_text()), "name": "fromfile", "trials": 4}
    assert saved == RunConfig.from_dict(merged)

    code, _, err = run_cli(["search", "--config", str(runs_dir / "fromfile" / "run.yaml"),
                            "--name", "again", "--quiet"], capfd)
    assert code == 0, err
    again = RunConfig.from_dict(yaml.safe_load((runs_dir / "again" / "run.yaml").read_text()))
    assert again == saved.replace(name="again")
    first, second = (pd.read_csv(runs_dir / n / "trials.csv") for n in ("fromfile", "again"))
    columns = ["trial", "state", "techniques", "params_json", "val_accuracy", "size_mb"]
    pd.testing.assert_frame_equal(first[columns], second[columns])
