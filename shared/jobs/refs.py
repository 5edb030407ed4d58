"""Base types of the wire contract: strict models, names, model references, payload keys."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)

from shared.names import KEY_INPUT

SCHEMA_VERSION: Literal[1] = 1
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
REF_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_-]{0,63})"
    r"(?:@(?P<alias>[a-z][a-z0-9_-]{0,31})|:(?P<version>[0-9]{1,9}))?"
    r"(?::(?P<variant>[a-z0-9][a-z0-9_-]{0,63}))?$"
)
DTYPE_SIZES = {"float32": 4, "float16": 2, "float64": 8, "uint8": 1, "int64": 8}
MAX_TENSOR_DIMS = 8

DeviceChoice = Literal["any", "cpu", "cuda"]
ServeBackend = Literal["eager", "compile", "onnx"]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
AliasName = Annotated[str, Field(pattern=ALIAS_PATTERN)]
Scalar = str | int | float | bool
MAX_ARCH_INT = 65_536
MAX_ARCH_STR = 256


def _check_arch_kwargs(kwargs: dict[str, Scalar]) -> dict[str, Scalar]:
    for key, value in kwargs.items():
        if not key.isidentifier() or len(key) > 64:
            raise ValueError(f"arch argument name {key[:64]!r} is not a Python identifier")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ARCH_INT:
            raise ValueError(f"arch argument {key}={value} is beyond +-{MAX_ARCH_INT}")
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= MAX_ARCH_INT):
            raise ValueError(
                f"arch argument {key}={value} is not finite or beyond +-{MAX_ARCH_INT}"
            )
        if isinstance(value, str) and len(value) > MAX_ARCH_STR:
            raise ValueError(f"arch argument {key} is longer than {MAX_ARCH_STR} characters")
    return kwargs


ArchKwargs = Annotated[dict[str, Scalar], AfterValidator(_check_arch_kwargs)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(Strict):
    """A parsed model reference: ``name``, ``name:version``, ``name@alias``, each ``[:variant]``."""

    name: str
    version: int | None = None
    alias: str | None = None
    variant: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        match = REF_RE.match(ref)
        if match is None:
            raise ValueError(
                f"bad model reference {ref!r}: expected name, name:VERSION or name@ALIAS, "
                "optionally followed by :VARIANT (lower-case letters, digits, - and _)"
            )
        version = match["version"]
        return cls(
            name=match["name"],
            version=int(version) if version else None,
            alias=match["alias"],
            variant=match["variant"],
        )

    def __str__(self) -> str:
        text = self.name
        if self.alias:
            text += f"@{self.alias}"
        elif self.version is not None:
            text += f":{self.version}"
        if self.variant:
            text += f":{self.variant}"
        return text


def _check_ref(ref: str) -> str:
    ModelRef.parse(ref)
    return ref


RefString = Annotated[str, Field(max_length=200), AfterValidator(_check_ref)]
# Only keys under the fleet's own input prefix: a job cannot make a worker read other keys.
InputKey = Annotated[str, Field(pattern=rf"^{re.escape(KEY_INPUT)}\S{{1,200}}$")]
