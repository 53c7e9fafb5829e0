"""The Pareto front: the maths (pure), the test-split finale, and reading a run back without torch."""
