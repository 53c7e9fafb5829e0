"""The one-definition rules of ``search/core``: one-line text, JSON-plain cells and the latency label,
the run folder's layout, "file or name", optional dependencies and the field a ``UserError`` names."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from search.config.run_config import RunConfig
from search.core import cells, layout, optional, paths, text
from search.core.errors import UserError
from targets import agent


@pytest.mark.parametrize(("raw", "expected"), [
    ("a\n  b\tc", "a b c"), ("", "no message"), ("   ", "no message"), ("x" * 10, "x" * 10),
])
def test_one_line_collapses_whitespace(raw, expected):
    assert text.one_line(raw) == expected


def test_one_line_shortens_with_an_ellipsis():
    assert text.one_line("y" * 500) == "y" * 297 + "..."
    assert len(text.one_line("word " * 100, 40)) == 40


def test_first_line_and_reason():
    assert text.first_line(ValueError("bad thing\n  at line 3\ntraceback")) == "bad thing"
    assert text.first_line(KeyError()) == "KeyError"
    assert text.reason(RuntimeError("out of\nmemory")) == "RuntimeError: out of memory"


@given(st.text(max_size=600), st.integers(min_value=4, max_value=400))
def test_the_agents_standalone_copy_flattens_text_the_same_way(raw, limit):
    """targets/agent.py runs alone on a device, so it keeps its own one_line: it must not drift."""
    assert agent.one_line(raw, limit) == text.one_line(raw, limit)


@pytest.mark.parametrize(("cell", "expected"), [
    (np.float64(1.5), 1.5), (np.int64(3), 3), (float("nan"), None), (float("inf"), None),
    (-math.inf, None), ("", None), (None, None), ("x", "x"), (np.bool_(True), True), (7, 7),
])
def test_plain_cells(cell, expected):
    value = cells.plain(cell)
    assert value == expected and type(value) is type(expected)


def test_plain_record_and_latency_label():
    assert cells.plain_record({"a": np.float32(0.5), "b": float("nan")}) == {"a": 0.5, "b": None}
    assert cells.latency_label("measured", None) == "measured"
    assert cells.latency_label("measured", 5.0) == "measured"  # a measurement has no error bar
    assert cells.latency_label("predicted:calibrated", np.float64(8.4)) == "predicted ±8%"
    assert cells.latency_label("predicted:analytic", float("nan")) == "predicted:analytic"
    assert cells.latency_label(float("nan"), 3.0) is None


def test_trial_folder_layout(tmp_path):
    assert layout.trial_dir(tmp_path, 7) == tmp_path / "trials" / "0007"
    assert layout.trial_name(12) == "trials/0012"
    assert (tmp_path / layout.trial_name(3)) == layout.trial_dir(tmp_path, 3)


@pytest.mark.parametrize(("value", "is_file"), [
    ("resnet18", False), ("vit_base_patch16_224.augreg_in21k", False), ("service.db", False),
    ("w.safetensors", True), ("W.PTH", True), ("ckpt/model", True), ("./teacher.bin", True),
    ("..\\x", True), ("teacher.ckpt", True),
])
def test_checkpoint_or_model_name(value, is_file):
    assert paths.is_file_reference(value) is is_file


@pytest.mark.parametrize(("value", "is_file"), [
    ("default", False), ("quant-only", False), ("mine.yaml", True), ("mine.YML", True), ("a/b", True),
    ("space.db", False),
])
def test_preset_or_space_file(value, is_file):
    assert paths.is_file_reference(value, paths.SPACE_SUFFIXES) is is_file


@pytest.mark.parametrize(("value", "ok"), [
    ("resnet18", True), ("vit_base_patch16_224.augreg_in21k", True), ("quant-only", True),
    ("a\u0000b", False), ("", False), ("../x", False), ("-x", False), ("a b", False),
])
def test_what_a_name_may_be(value, ok):
    assert paths.is_name(value) is ok


def test_require_names_what_to_install():
    assert optional.require("json", "anything").dumps([1]) == "[1]"
    with pytest.raises(UserError, match=r"shared storage needs no_such_pkg_x.*pip install no_such_pkg_x"):
        optional.require("no_such_pkg_x.sub", "shared storage")
    assert optional.available("json") and not optional.available("no_such_pkg_x")


def test_require_uses_the_extras_for_known_packages(monkeypatch):
    import importlib

    real = importlib.import_module

    def missing_ray(name, *args):
        if name.split(".")[0] == "ray":
            raise ModuleNotFoundError(f"No module named {name!r}", name="ray")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing_ray)
    with pytest.raises(UserError, match=r"^--backend ray needs ray, which is not installed: pip install "
                                        r"'edgepareto\[ray\]'$"):
        optional.require("ray.tune", "--backend ray")


@pytest.mark.parametrize(("settings", "field"), [
    ({"trials": 0}, "trials"), ({"img_size": 4}, "img_size"), ({"sampler": "grid"}, "sampler"),
    ({"objectives": ("energy",)}, "objectives"), ({"img_size": 30, "patch_size": 4}, "patch_size"),
    ({"max_latency_ms": -1.0}, "max_latency_ms"), ({"batch_size": "8"}, "batch_size"),
    ({"imgsize": 8}, "imgsize"), ({"name": "../x"}, "name"), ({"gpus_per_trial": 1.0}, "gpus_per_trial"),
])
def test_user_errors_name_their_field(settings, field):
    with pytest.raises(UserError) as caught:
        RunConfig.from_dict(settings)
    assert caught.value.field == field


def test_user_error_without_a_field():
    assert UserError("plain").field is None


def test_run_folder_files_are_the_ones_load_run_reads(tmp_path):
    from search.front.run import load_report

    run = tmp_path / "r"
    run.mkdir()
    for name in layout.RESULT_FILES[:-1]:
        (run / name).write_text("trial\n0\n")
    with pytest.raises(UserError, match="has no results yet"):
        load_report(Path(run))
