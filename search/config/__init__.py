"""What defines a search: ``RunConfig`` and the objectives table."""
