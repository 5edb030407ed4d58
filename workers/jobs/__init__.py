"""The use cases: jobs that wire the pure code (train/, compression/) to the registry and store."""
