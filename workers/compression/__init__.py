"""Compression methods as composable steps: pruning, quantization, distillation, casting, export.

Pure code over modules and tensors; each method registers its step handler (and its recipe,
when it changes the module's skeleton) in :data:`methods.METHODS` by its config type, and
importing the package imports every method: ``from workers.compression import METHODS``
is the complete registry. The
compress job that runs them against the registry and the store is
:mod:`workers.jobs.compression`.
"""

from workers.compression import casting, distillation, export, pruning, quantization
from workers.compression.methods import METHODS

__all__ = ["METHODS", "casting", "distillation", "export", "pruning", "quantization"]
