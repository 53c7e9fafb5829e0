"""Latency calibration: diverse untrained candidates, measured, and a predictor fitted on them."""
