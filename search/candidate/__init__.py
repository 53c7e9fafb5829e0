"""One candidate end to end: built from the base model (``build``), then scored (``evaluate``)."""
