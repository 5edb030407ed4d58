"""The client side: a Python API and the `torchfleet` command line. Never imports torch."""

from producers.client import Client, JobState, NoWorker, UnknownJob
from producers.encoding import encode_array, encode_image, encode_images, encode_nested

__all__ = [
    "Client",
    "JobState",
    "NoWorker",
    "UnknownJob",
    "encode_array",
    "encode_image",
    "encode_images",
    "encode_nested",
]
