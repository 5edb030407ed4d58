"""Which data a compress job measures, calibrates and fine-tunes on.

The job's ``eval_dataset`` when it names one; otherwise the data the source was trained on,
which its manifest's lineage records (a compressed variant inherits its parent's lineage).
The manifest lives in the artifact store, which a torch-free producer may not reach (an
S3 bucket or a worker-only volume), so a source with neither is refused here, before any
step runs, as an input error that names the setting to add.
"""

from __future__ import annotations

from pydantic import ValidationError

from shared.errors import InvalidJob
from shared.jobs import DatasetSpec, describe_errors
from shared.jobs.results import EvalOrigin
from shared.manifest import Manifest


def eval_dataset(
    requested: DatasetSpec | None, manifest: Manifest, ref: str
) -> tuple[DatasetSpec, EvalOrigin]:
    """The dataset spec to evaluate ``ref`` on, and where it came from."""
    if requested is not None:
        return requested, "job"
    recorded = manifest.lineage.get("dataset")
    if not isinstance(recorded, dict):
        raise InvalidJob(
            f"{ref} records no training dataset in its lineage (it was not trained by this "
            "fleet), so there is no data to measure it on: set the job's eval_dataset"
        )
    try:
        return DatasetSpec.model_validate(recorded), "lineage"
    except ValidationError as e:
        raise InvalidJob(
            f"the training dataset in {ref}'s lineage is not a valid dataset spec here "
            f"({describe_errors(e)}); set the job's eval_dataset"
        ) from None
