"""The study: samplers, objective, constraints, the ask/tell engine, workers, the Ray backend."""
