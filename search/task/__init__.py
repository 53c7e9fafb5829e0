"""The task: data splits, the base model, and its trained baseline (cached under ``runs/``)."""
