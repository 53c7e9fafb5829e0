"""Bounds on every size-like setting (``search.config.bounds``): one table, applied by RunConfig, the
CLI and the service's request model; the in-memory data set checked against the machine's memory."""

import dataclasses

import pytest

from search.config.bounds import (
    BOUNDS,
    DATA_COPIES,
    MEMORY_SHARE,
    Bound,
    check_data_memory,
    dataset_bytes,
)
from search.config.run_config import RunConfig
from search.core.errors import UserError
from tests.support.cli import run_cli

#: Settings that only make sense with another one (RunConfig checks that separately).
NEEDS = {"max_concurrent": {"backend": "ray"}, "gpus_per_trial": {"backend": "ray"}}


def test_every_size_like_setting_has_a_bound():
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(BOUNDS) <= fields
    sizes = {"img_size", "patch_size", "epochs", "batch_size", "trials", "timeout", "trial_timeout",
             "threads", "repeats", "cpus_per_trial", "max_concurrent", "gpus_per_trial"}
    assert sizes <= set(BOUNDS)


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_a_value_above_the_bound_is_a_user_error_naming_the_setting(key):
    bound = BOUNDS[key]
    too_big = int(bound.high) + 1 if bound.integer else bound.high * 2
    with pytest.raises(UserError) as caught:
        RunConfig(**NEEDS.get(key, {}), **{key: too_big})
    flag = "--" + key.replace("_", "-")
    assert caught.value.field == key and str(caught.value).startswith(flag), str(caught.value)
    assert str(int(bound.high)) in str(caught.value)


@pytest.mark.parametrize(("key", "value"), [("trials", 10**30), ("img_size", 10**30), ("seed", -1),
                                            ("timeout", 1e300), ("repeats", 4), ("batch_size", 0)])
def test_config_files_are_bounded_too(key, value):
    with pytest.raises(UserError) as caught:
        RunConfig.from_dict({key: value})
    assert caught.value.field == key


def test_the_largest_allowed_values_pass():
    high = {k: (int(b.high) if b.integer else b.high) for k, b in BOUNDS.items()}
    cfg = RunConfig(backend="ray", **{**high, "patch_size": high["img_size"]})
    assert cfg.trials == high["trials"] and cfg.img_size == high["img_size"]


def test_bound_contains():
    ints = Bound(1, 10)
    assert ints.contains(1) and ints.contains(10)
    assert not ints.contains(0) and not ints.contains(11) and not ints.contains(2.0)
    assert not ints.contains(True) and not ints.contains(None) and not ints.contains("3")
    seconds = Bound(0, 60, integer=False, open_low=True, unit="seconds")
    assert seconds.contains(0.5) and seconds.contains(60) and seconds.contains(3)
    assert not seconds.contains(0) and not seconds.contains(float("nan"))
    assert not seconds.contains(float("inf"))
    assert ints.describe() == "an integer from 1 to 10"
    assert seconds.describe() == "a number of seconds above 0 and at most 60"
    assert seconds.constraints() == {"gt": 0, "le": 60}


def test_dataset_bytes():
    assert dataset_bytes(10, 32, copies=1) == 10 * 3 * 32 * 32 * 4
    assert dataset_bytes(10, 32) == DATA_COPIES * dataset_bytes(10, 32, copies=1)


def test_a_data_set_that_does_not_fit_in_memory_names_img_size():
    available = 8 * 10**9
    check_data_memory(1797, 224, available)  # 3.2 GB: fits in half of 8 GB
    check_data_memory(1797, 224, None)  # unknown memory: not checked
    with pytest.raises(UserError) as caught:
        check_data_memory(1797, 2048, available)
    message = str(caught.value)
    assert caught.value.field == "img_size" and "\n" not in message
    assert message.startswith("--img-size 2048: 1797 images need about 271 GB in memory")
    suggested = int(message.rsplit("--img-size ", 1)[1].split()[0])  # "use --img-size N or less"
    assert dataset_bytes(1797, suggested) <= MEMORY_SHARE * available
    assert dataset_bytes(1797, suggested + 1) > MEMORY_SHARE * available
    with pytest.raises(UserError, match="fewer images"):
        check_data_memory(10**9, 16, available)


def test_a_data_set_per_base_model_counts():
    one = dataset_bytes(1000, 100, copies=1)
    check_data_memory(1000, 100, int(2 * DATA_COPIES * one))
    with pytest.raises(UserError):
        check_data_memory(1000, 100, int(2 * DATA_COPIES * one), datasets=3)


@pytest.mark.parametrize(("flags", "needle"), [
    (["--img-size", "100000"], "--img-size must be an integer from 8 to 2048, got 100000"),
    (["--trials", str(10**30)], "--trials must be an integer from 1 to 100000"),
    (["--epochs", "1000000"], "--epochs must be an integer from 0 to 1000"),
    (["--batch-size", "100000000"], "--batch-size"),
    (["--threads", "99999"], "--threads"),
    (["--repeats", "1000000000"], "--repeats"),
    (["--timeout", "1e30"], "--timeout must be a number of seconds above 0"),
    (["--trial-timeout", "1e30"], "--trial-timeout"),
    (["--patch-size", "100000"], "--patch-size"),
])
def test_the_cli_says_one_line_and_exits_2(tmp_path, capfd, flags, needle):
    code, _, err = run_cli(["search", "--runs-dir", str(tmp_path / "runs"), *flags], capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [
    ["calibrate", "--samples", "10000000"],
    ["calibrate", "--img-size", "100000"],
    ["calibrate", "--threads", "0"],
    ["calibrate", "--repeats", "1e9"],
    ["calibrate", "--repeats", "0"],
    ["calibrate", "--seed", "-1"],
    ["bench", "search", "--trials", str(10**30)],
    ["bench", "search", "--seeds", "100000"],
    ["bench", "scaling", "--img-size", "100000"],
    ["bench", "scaling", "--epochs", "1000000"],
    ["bench", "predictor", "--train", "0"],
    ["bench", "predictor", "--held-out", "10000000"],
    ["bench", "service", "--clients", "1000000"],
    ["bench", "service", "--bursts", "0"],
    ["bench", "service", "--soak", "--searches", "100000"],
    ["bench", "service", "--soak", "--max-running", "0"],
    ["bench", "service", "--soak", "--kills", "1000"],
    ["serve", "--port", "70000"],
    ["serve", "--max-running", "-1"],
    ["serve", "--max-body-bytes", "10"],
    ["analyze", "model.onnx", "--batch", "100000"],
])
def test_the_other_commands_flags_are_bounded_too(tmp_path, capfd, argv):
    """Every size-like flag of calibrate, bench, serve and analyze: one line naming it, exit 2, before
    any work (nothing is written)."""
    code, out, err = run_cli([*argv, *(["--runs-dir", str(tmp_path / "runs")] if argv[0] in
                                       ("calibrate", "bench", "serve") else [])], capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    flag = next(a for a in argv if a.startswith("--") and a != "--soak")
    assert code == 2 and len(lines) == 1 and flag in lines[0] and "must be" in lines[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", [-1.0, 86_401.0, float("nan"), float("inf")])
def test_the_database_wait_is_bounded_by_the_same_table(value):
    from search.study.cluster import db_retry_s

    with pytest.raises(UserError, match="--db-retry-s must be a number of seconds from 0 to 86400"):
        db_retry_s(value)
    assert db_retry_s(0.0) == 0.0 and db_retry_s(86_400.0) == 86_400.0
