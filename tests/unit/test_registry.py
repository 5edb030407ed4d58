"""The model registry against a real redis-server."""

from __future__ import annotations

import pytest

from shared.errors import InvalidJob, ModelNotFound
from shared.registry import ModelRegistry, VariantRecord


def record(digest: str = "a" * 64) -> VariantRecord:
    return VariantRecord(digest=digest, arch="cifar_cnn")


def test_versions_variants_and_latest(registry: ModelRegistry) -> None:
    assert registry.new_version("m") == 1
    registry.register("m", 1, "base", record("1" * 64))
    assert registry.new_version("m") == 2
    registry.register("m", 2, "base", record("2" * 64))
    registry.register("m", 2, "int8", record("3" * 64))
    assert registry.resolve("m").version == 2
    assert registry.resolve("m:1").record.digest == "1" * 64
    assert registry.resolve("m:2:int8").record.digest == "3" * 64
    assert registry.resolve("m:int8").variant == "int8"
    assert registry.names() == ["m"]


def test_alias_production_wins_for_bare_names_and_rolls_back(registry: ModelRegistry) -> None:
    for version in (1, 2):
        registry.new_version("m")
        registry.register("m", version, "base", record(str(version) * 64))
    registry.set_alias("m", "production", 1)
    assert registry.resolve("m").version == 1
    registry.set_alias("m", "production", 2)
    assert registry.resolve("m@production").version == 2
    assert registry.rollback("m", "production").version == 1
    assert registry.resolve("m").version == 1
    with pytest.raises(InvalidJob, match="no earlier target"):
        registry.rollback("m", "production")


def test_unknown_things_raise_model_not_found(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFound, match="not registered"):
        registry.resolve("ghost")
    registry.new_version("m")
    registry.register("m", 1, "base", record())
    with pytest.raises(ModelNotFound):
        registry.resolve("m:9")
    with pytest.raises(ModelNotFound):
        registry.resolve("m@nope")
    with pytest.raises(ModelNotFound):
        registry.set_alias("m", "production", 1, "int8")
