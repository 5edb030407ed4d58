"""Model architectures and datasets by name."""

from workers.zoo.datasets import DATASETS, DatasetBundle, load_dataset
from workers.zoo.models import MODELS, create_model, list_models

__all__ = ["DATASETS", "MODELS", "DatasetBundle", "create_model", "list_models", "load_dataset"]
