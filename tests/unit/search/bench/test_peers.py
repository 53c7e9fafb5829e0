"""``bench peers``: which front models dominate a smaller model trained from scratch."""

from __future__ import annotations

import pandas as pd

from search.bench.peers import dominated_by, peers_of

FRONT = pd.DataFrame({
    "trial": [0, 3, 7],
    "test_accuracy": [0.99, 0.97, 0.95],
    "latency_ms": [4.0, 1.0, 0.5],
    "size_mb": [44.0, 11.0, 3.0],
})


def peer(accuracy: float, latency: float, size: float) -> pd.Series:
    return pd.Series({"test_accuracy": accuracy, "latency_ms": latency, "size_mb": size})


def test_a_peer_is_dominated_by_every_front_model_at_least_as_good_on_all_three():
    assert dominated_by(peer(0.96, 2.0, 20.0), FRONT) == "3"
    assert dominated_by(peer(0.95, 0.5, 3.0), FRONT) == "7"  # ties count: no worse on any
    assert dominated_by(peer(0.90, 5.0, 50.0), FRONT) == "0, 3, 7"


def test_a_peer_the_front_does_not_dominate():
    assert dominated_by(peer(0.98, 0.9, 20.0), FRONT) == ""  # faster than 3, more accurate than 7
    assert dominated_by(peer(0.96, 0.6, 2.0), FRONT) == ""  # smaller than all


def test_peers_are_smaller_variants_of_the_model():
    assert peers_of("resnet18") == ("resnet10t", "resnet14t")
    assert peers_of("mobilenetv2_100")[0] == "mobilenetv2_050"
    assert peers_of("convnext_atto") == ()
