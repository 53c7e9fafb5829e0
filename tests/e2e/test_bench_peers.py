"""``edgepareto bench peers``: a finished run's front against smaller models trained from scratch with
the baseline's recipe. The peer named here is the run's own architecture, so its from-scratch model
is the run's cached baseline: the same file, the same test accuracy, which the table must show."""

from __future__ import annotations

import pandas as pd
import pytest

from search.bench.peers import bench_peers
from tests.support.cli import TINY, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_the_peer_table_times_the_front_and_the_peers_side_by_side(runs_dir, capfd):
    code, _, err = run_cli(["search", "--runs-dir", str(runs_dir), "--name", "peers", "--trials", "3",
                            "--space", "quant-only", *TINY], capfd)
    assert code == 0, err
    table = bench_peers(runs_dir / "peers", peers=["test_resnet"], log=lambda _m: None, repeats=5)
    front = pd.read_csv(runs_dir / "peers" / "pareto.csv")
    assert list(table[table["kind"] == "front"]["trial"]) == list(front["trial"])
    peers = table[table["kind"] == "peer"]
    assert list(peers["techniques"]) == ["from scratch, fp32", "from scratch, int8"]
    baseline = front[front["role"].str.startswith("baseline")]["test_accuracy"].iloc[0]
    assert peers["test_accuracy"].iloc[0] == pytest.approx(baseline)  # the cached baseline itself
    assert (table["latency_ms"] > 0).all() and peers["size_mb"].iloc[1] < peers["size_mb"].iloc[0]
    code, out, err = run_cli(["bench", "peers", "--runs-dir", str(runs_dir), "--model", "test_resnet"], capfd)
    assert code != 0 and "bench peers needs --run NAME" in err
