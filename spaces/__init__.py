"""Compression techniques and their search spaces.

Importing this package registers every technique in ``TECHNIQUES``; ``Space`` turns a preset or a
YAML file into a define-by-run Optuna search space.
"""

from spaces import distill, lowrank, prune, qat, quantize, resolution, sparsity, tokens, vit  # noqa: F401  (registration)
from spaces.base import TECHNIQUES, Candidate, Context, OnnxTechnique, Step, TorchTechnique
from spaces.space import PRESETS, Space, TechniqueSpace

__all__ = [
    "PRESETS",
    "TECHNIQUES",
    "Candidate",
    "Context",
    "OnnxTechnique",
    "Space",
    "Step",
    "TechniqueSpace",
    "TorchTechnique",
]
