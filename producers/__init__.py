"""The client side: a Python API and the `torchfleet` command line. Never imports torch."""

from producers.client import Client, JobState

__all__ = ["Client", "JobState"]
