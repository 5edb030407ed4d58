"""Compression jobs: pruning, quantization, distillation and export as composable steps.

Importing this package registers every step handler (:data:`steps.STEPS`) and every recipe
(:data:`workers.modelio.RECIPES`) it needs to rebuild compressed variants.
"""

from workers.compression import casting, distillation, export, pruning, quantization
from workers.compression.pipeline import execute
from workers.compression.steps import STEPS

__all__ = ["STEPS", "casting", "distillation", "execute", "export", "pruning", "quantization"]
