"""Training utilities: optimisers, EMA and learning-rate schedules (no network code)."""
