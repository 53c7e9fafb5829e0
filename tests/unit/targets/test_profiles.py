"""Device profiles: shipped files validate, bad files get a clear error; the analytic prior by hand."""

import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from search.core.errors import UserError
from targets.graph import analyze
from targets.profile import PROFILE_DIR, Profile, predict_seconds, shipped_profiles
from tests.support.cli import run_cli

SHIPPED = ("rpi4", "rpi5", "jetson-orin-nano-cpu", "arm-a53-1core", "cortex-m7")


def test_shipped_profiles_validate_and_cite_their_sources():
    profiles = shipped_profiles()
    assert set(SHIPPED) <= set(profiles)
    for p in profiles.values():
        assert p.macs_per_s["float32"] > 0 and p.memory_bandwidth_bytes_per_s > 0
        assert all(p.sources[f"macs_per_s.{d}"] for d in ("float32", "int8", "float16"))
    assert profiles["cortex-m7"].flash_bytes == 2e6 and profiles["rpi4"].macs_per_s["float16"] is None


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.pop("memory_bandwidth_bytes_per_s"), "missing key memory_bandwidth_bytes_per_s"),
        (lambda d: d.update(cores="four"), "cores has the wrong type"),
        (lambda d: d.update(colour="red"), "unknown key(s) colour"),
        (lambda d: d["macs_per_s"].update(float32=-1.0), "macs_per_s.float32 must be positive"),
        (lambda d: d["sources"].pop("per_op_overhead_s"), "do not say where per_op_overhead_s"),
        (lambda d: d.update(thread_speedup_exponent=1.5), "thread_speedup_exponent must be a number in"),
        (lambda d: d.update(thread_speedup_exponent="fast"), "thread_speedup_exponent must be a number"),
        (lambda d: d["sources"].pop("thread_speedup_exponent"), "do not say where thread_speedup_exponent"),
    ],
)
def test_bad_profile_files_get_a_clear_error(tmp_path, change, needle):
    data = yaml.safe_load((PROFILE_DIR / "rpi4.yaml").read_text())
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="profile .*bad.yaml") as info:
        Profile.load(path)
    assert needle in str(info.value)
    path.write_text("{{{ not yaml")
    with pytest.raises(UserError, match="cannot read profile"):
        Profile.load(path)


def test_analytic_prior_by_hand():
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    inits = [numpy_helper.from_array(np.zeros((1000, 500), np.float32), "w"),
             numpy_helper.from_array(np.zeros(1000, np.float32), "b")]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 500])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )
    cost = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    rpi4 = shipped_profiles()["rpi4"]
    compute = 500_000 / 6.0e9
    memory = ((1000 * 500 + 1000) * 4 + 2 * 1000 * 4) / 4.0e9  # weights + bias; the output written, read
    assert predict_seconds(cost, rpi4) == pytest.approx(max(compute, memory) + 8e-6)
    m7 = shipped_profiles()["cortex-m7"]
    assert predict_seconds(cost, m7) == pytest.approx(max(500_000 / 0.48e9, memory * 4 / 1.9) + 20e-6)


def test_targets_command_lists_host_and_profiles(capfd):
    code, out, _ = run_cli(["targets"], capfd)
    assert code == 0 and out.startswith("host")
    for name in SHIPPED:
        assert f"\n{name} " in out


def test_integer_constants_are_read_as_numbers(tmp_path):
    data = yaml.safe_load((PROFILE_DIR / "cortex-m7.yaml").read_text())
    data.update(flash_bytes=2_000_000, ram_bytes=1_000_000)
    path = tmp_path / "m7.yaml"
    path.write_text(yaml.safe_dump(data))
    assert Profile.load(path).flash_bytes == 2e6
