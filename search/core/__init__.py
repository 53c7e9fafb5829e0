"""The shared leaf: errors, registry, atomic writes, run-folder layout and text rules.

The only part of ``search`` that ``spaces`` and ``targets`` import; it imports nothing of the project."""
