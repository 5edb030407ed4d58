"""Measurement and test harnesses around real workers: the in-process floor, worker processes
started through the CLI, seeded models registered as training would, the chaos fleet."""
