"""Spaces: presets, narrowing from YAML, validation, define-by-run sampling."""

import optuna
import pytest

from search.core.errors import UserError
from spaces import PRESETS, TECHNIQUES, Space


def test_presets_load_and_list_every_technique_in_order():
    assert {"default", "cnn", "quant-only"} <= set(PRESETS)
    space = Space.load("default")
    names = [t.name for t in space.techniques]
    assert names == ["resolution", "prune", "lowrank", "sparsity", "distill", "quantize"]
    assert [TECHNIQUES.get(n).order for n in names] == sorted(TECHNIQUES.get(n).order for n in names)
    assert "ratio=[0.2, 0.85]" in space.describe()


def test_yaml_narrows_and_fixes_values(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("techniques:\n  prune: {enabled: always, ratio: 0.5, importance: [l2]}\n")
    space = Space.load(str(f))
    (prune,) = space.techniques
    assert prune.always
    ratio = next(p for p in prune.params if p.name == "ratio")
    assert ratio.low == ratio.high == 0.5
    study = optuna.create_study()
    cand = space.sample(study.ask())
    chosen = cand.steps[0].params  # scope and residual are searched over their whole domains
    searched = {k: chosen[k] for k in ("scope", "residual")}
    assert cand.to_dict() == {"prune": {"ratio": 0.5, "importance": "l2", **searched}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("techniques:\n  prune: {ratio: [0.1, 1.5]}\n", "out of range"),
        ("techniques:\n  prune: {ratio: [0.8, 0.2]}\n", "above high"),
        ("techniques:\n  prune: {importance: [l3]}\n", "not one of"),
        ("techniques:\n  prune: {speed: 2}\n", "unknown parameter"),
        ("techniques:\n  pruning: {}\n", "unknown technique"),
        ("techniques:\n  prune: {enabled: maybe}\n", "enabled"),
        ("techniques: [prune]\n", "mapping"),
        ("techniques: {prune: {ratio: [}\n", "cannot read"),
        ("techniques: {}\n", "no techniques"),
        ("techniques:\n  distill: {epochs: 2.5}\n", "integer"),
    ],
)
def test_invalid_space_files(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        Space.load(str(f))


def test_unknown_preset():
    with pytest.raises(UserError, match="neither a preset"):
        Space.load("no-such-space")


def test_conditional_parameters_follow_the_mode():
    space = Space.load("quant-only")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        cand = space.sample(trial)
        study.tell(trial, 0.0)
        if not cand.steps:
            continue
        cfg = cand.steps[0].params
        seen.add(cfg["mode"])
        assert ("per_channel" in cfg) == (cfg["mode"] in ("dynamic", "static"))
        assert ("calibration" in cfg) == (cfg["mode"] == "static")
    assert seen == {"dynamic", "static", "fp16"}


def test_baseline_switches_everything_off():
    space = Space.load("default")
    study = optuna.create_study()
    study.enqueue_trial(space.baseline_params())
    trial = study.ask()
    assert space.sample(trial, baseline=True).steps == ()
    names = ("resolution", "prune", "lowrank", "sparsity", "distill", "quantize")
    assert trial.params == {n: False for n in names}


def test_recipes_are_one_technique_each_and_inside_the_space(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "techniques:\n  prune: {ratio: [0.6, 0.8], importance: [taylor]}\n"
        "  distill: {epochs: [3, 4]}\n  quantize: {mode: [fp16, dynamic]}\n"
    )
    space = Space.load(str(f))
    prune, quant = space.recipes()
    assert prune["prune"] and prune["distill"] and not prune["quantize"]
    assert prune["prune.ratio"] == 0.6 and prune["prune.importance"] == "taylor"  # moved inside
    assert prune["distill.epochs"] == 3
    assert quant["quantize"] and not quant["prune"] and not quant["distill"]
    assert quant["quantize.mode"] == "fp16"  # the recipe's 'static' is not in this space
    study = optuna.create_study()
    for params in space.recipes():
        study.enqueue_trial(params)
    labels = [space.sample(study.ask()).label() for _ in range(2)]
    assert labels[0].startswith("prune(60% taylor") and "distill(3ep" in labels[0]
    assert labels[1] == "quantize(fp16)"


def test_halving_fixes_the_training_epochs_at_their_bound():
    techniques = {"prune": {"ratio": [0.2, 0.6]}, "distill": {"epochs": [1, 4]}}
    space = Space.from_mapping({"techniques": techniques})
    fixed = space.epochs_fixed()
    assert space.epochs_bound() == fixed.epochs_bound() == 4
    distill = {t.name: t for t in fixed.techniques}["distill"]
    assert {p.name: p.describe() for p in distill.params}["epochs"] == "4"
    assert fixed.to_mapping()["techniques"]["prune"] == space.to_mapping()["techniques"]["prune"]
    assert Space.from_mapping(fixed.to_mapping()) == fixed  # saved and resumed as it is
    assert Space.from_mapping({"techniques": {"prune": {}}}).epochs_bound() is None
