"""``bench techniques --mixed-precision``: NNCF's quantization of our exported file, scored the way
we score ours, and the count of layers a mixed-precision file left float."""

from __future__ import annotations

import pytest

from search.candidate.build import export_onnx
from search.candidate.evaluate import onnx_accuracy
from search.core.errors import UserError
from spaces import TECHNIQUES
from spaces.train import fit

pytest.importorskip("nncf", reason="NNCF is the optional extra '.[nncf]' (in '.[test]')")

from search.bench.mixed import _samples, _top1, float_layers, nncf_quantize  # noqa: E402

STATIC = {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all"}


@pytest.fixture
def fp32(tiny_model, ctx, tmp_path):
    model = fit(tiny_model, ctx.train, epochs=1, lr=3e-3, batch_size=64, seed=0)
    return export_onnx(model, ctx.example_input, tmp_path / "fp32.onnx")


def test_float_layers_counts_the_weighted_layers_left_float(fp32, ctx, tmp_path):
    kept, weighted = float_layers(fp32)
    assert kept == weighted >= 4
    quantize = TECHNIQUES.get("quantize")()
    for share, expected in ((0.0, 0), (1.0, weighted)):
        out = tmp_path / f"keep{share}.onnx"
        quantize.apply(fp32, out, {**STATIC, "keep_float": share}, ctx)
        assert float_layers(out) == (expected, weighted)


def test_nncf_scores_with_our_accuracy_and_its_files_are_int8(fp32, digits16, ctx, tmp_path):
    """The validation function NNCF calls gives exactly our onnxruntime accuracy; NNCF's plain int8
    quantizes the weighted layers; its accuracy control keeps the drop it was given."""
    import onnx

    val = digits16.val.subset(96)
    accuracy, hits = _top1(onnx.load(str(fp32)), _samples(val, 16))
    assert len(hits) == 96 and accuracy == pytest.approx(onnx_accuracy(fp32, val), abs=1e-9)

    plain = nncf_quantize(fp32, tmp_path / "nncf.onnx", ctx.train)
    kept, weighted = float_layers(plain)
    assert kept < weighted
    controlled = nncf_quantize(fp32, tmp_path / "nncf-ac.onnx", ctx.train, val, max_drop=0.02)
    assert onnx_accuracy(controlled, val) >= accuracy - 0.02 - 1e-9


def test_without_nncf_the_bench_says_how_to_install_it(monkeypatch):
    import builtins

    from search.bench import mixed

    real = builtins.__import__

    def no_nncf(name, *args, **kwargs):
        if name == "nncf":
            raise ImportError("No module named 'nncf'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nncf)
    with pytest.raises(UserError, match=r"pip install -e '\.\[nncf\]'"):
        mixed._nncf()
