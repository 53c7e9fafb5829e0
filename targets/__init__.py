"""Latency targets. Importing this package registers every target in ``TARGETS``."""

from targets import host, profile, remote  # noqa: F401  (registration)
from targets.base import TARGETS, Latency, Target, create_target

__all__ = ["TARGETS", "Latency", "Target", "create_target"]
