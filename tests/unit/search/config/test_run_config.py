"""RunConfig validation and its YAML/JSON round trip."""

import dataclasses

import pytest
import yaml

from search.config.run_config import RunConfig
from search.core.errors import UserError
from tests.support.cli import run_cli


def test_round_trip_through_yaml():
    cfg = RunConfig(name="a", trials=7, objectives=("accuracy", "latency"), max_latency_ms=2.5)
    back = RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert back == cfg
    assert back.directions == ["maximize", "minimize"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trials": 0}, "--trials"),
        ({"objectives": ("speed",)}, "unknown objective"),
        ({"objectives": ()}, "at least one"),
        ({"objectives": ("size", "size")}, "twice"),
        ({"min_accuracy": 97}, "fraction"),
        ({"max_latency_ms": -1.0}, "positive"),
        ({"max_accuracy_drop": -1.0}, "negative"),
        ({"val_fraction": 0.7}, "val-fraction"),
        ({"name": "../escape"}, "run name"),
        ({"sampler": "grid"}, "sampler"),
        ({"img_size": 4}, "img-size"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_invalid_settings_are_user_errors(changes, message):
    with pytest.raises(UserError, match=message):
        RunConfig(**changes)


def test_unknown_key_is_rejected():
    with pytest.raises(UserError, match="unknown config key"):
        RunConfig.from_dict({"modle": "resnet18"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"modle": "resnet18"}, "unknown config key 'modle'; did you mean 'model'?"),
        ({"lr": "fast"}, "config key 'lr' must be a finite number or null, got 'fast'"),
        ({"img-size": 16.5}, "config key 'img-size' must be an integer or null, got 16.5"),
        ({"trials": True}, "config key 'trials' must be an integer"),
        ({"warm_start": "sometimes"}, "config key 'warm_start' must be true/false"),
        ({"objectives": [1, 2]}, "config key 'objectives' must be a list of strings"),
        ({"model": {"a": 1}}, "config key 'model' must be a string or a list of strings"),
        ({"img_size": 16, "img-size": 16}, "given twice"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key(data, message):
    with pytest.raises(UserError) as caught:
        RunConfig.from_dict(data)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_every_search_flag_has_a_yaml_key():
    from search.cli.main import SEARCH_OPTIONS

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert {dest for dest, _, _ in SEARCH_OPTIONS.values()} | {"runs_dir"} == fields
    for flag, (dest, _, _) in SEARCH_OPTIONS.items():  # the flag's own spelling works as a key too
        assert flag.removeprefix("--") in {dest, dest.replace("_", "-")}


def test_yaml_spellings_match_the_flags():
    cfg = RunConfig.from_dict({
        "model": "resnet18,vit_tiny_patch16_224", "objectives": "accuracy,latency", "img-size": 16,
        "warm-start": False, "lr": 1, "max-latency-ms": 2,
    })
    assert cfg.model == ("resnet18", "vit_tiny_patch16_224") and cfg.objectives == ("accuracy", "latency")
    assert cfg.img_size == 16 and cfg.warm_start is False and cfg.lr == 1.0 and cfg.max_latency_ms == 2.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("trials: 3\nepoch: 2\n", "unknown config key 'epoch'; did you mean 'epochs'?"),
        ("trials: three\n", "config key 'trials' must be an integer, got 'three'"),
        ("- trials\n", "must be a mapping"),
        ("trials: [\n", "cannot read config"),
    ],
)
def test_bad_config_files_are_one_line_errors(content, message, tmp_path, capfd):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    code, _, err = run_cli(["search", "--config", str(config), "--runs-dir", str(tmp_path / "runs")], capfd)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
