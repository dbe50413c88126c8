"""The storage layer: one SQLite database behind a narrow, backend-neutral interface."""
