"""Torch-free contracts shared by producers and workers: settings, jobs, names, errors."""
