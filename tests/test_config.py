"""RunConfig validation and its YAML/JSON round trip."""

import pytest
import yaml

from search.config import RunConfig
from search.errors import UserError


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
