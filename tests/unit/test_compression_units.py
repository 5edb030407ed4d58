"""The pure parts of compression: the int8 codec, layer reshaping, names, gates, percentiles."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shared.jobs import CompressJob
from shared.manifest import Manifest
from tests.unit.compression_helpers import variant_report
from workers.artifacts import from_safetensors, to_safetensors
from workers.compression.evaluation import count_weights, percentile
from workers.compression.pruning import apply_shapes, layer_shapes, sparsity
from workers.compression.quantization import (
    convert_static,
    decode_state,
    encode_state,
    prepare_static,
    quantize_dynamic_module,
)
from workers.compression.variants import best, default_name, gate, planned_variants
from workers.modelio import build_module, export_tensors
from workers.zoo.models import create_model

KWARGS = {"num_classes": 10, "in_channels": 1, "image_size": 8}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", hidden=32, depth=2, **KWARGS).eval()


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_round_trips_through_safetensors(per_channel: bool) -> None:
    quantized = quantize_dynamic_module(mlp(), per_channel=per_channel)
    blob = to_safetensors(encode_state(quantized.state_dict()))
    manifest = Manifest(
        arch="mlp",
        arch_kwargs={"hidden": 32, "depth": 2, **KWARGS},
        input_shape=[1, 8, 8],
        num_classes=10,
        recipe=[{"method": "quantize_dynamic", "per_channel": per_channel, "engine": "x86"}],
    )
    rebuilt = build_module(manifest, from_safetensors(blob, what="test"))
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(rebuilt(x), quantized(x))
    assert all(
        t.dtype in (torch.int8, torch.float32, torch.float64, torch.int64)
        for t in from_safetensors(blob, what="test").values()
    )


def test_static_int8_round_trips_through_safetensors() -> None:
    torch.manual_seed(0)
    float_model = create_model("cifar_cnn", **KWARGS).eval()
    prepared = prepare_static(copy.deepcopy(float_model), torch.zeros(1, 1, 8, 8), "x86")
    prepared(torch.randn(64, 1, 8, 8))
    quantized = convert_static(prepared)
    manifest = Manifest(
        arch="cifar_cnn",
        arch_kwargs=KWARGS,
        input_shape=[1, 8, 8],
        num_classes=10,
        recipe=[{"method": "quantize_static", "backend": "x86", "input_shape": [1, 8, 8]}],
    )
    tensors = from_safetensors(to_safetensors(export_tensors(quantized, manifest)), what="t")
    rebuilt = build_module(manifest, tensors)
    x = torch.randn(7, 1, 8, 8)
    assert torch.equal(rebuilt(x), quantized(x))


def test_decode_refuses_tensors_the_model_does_not_have() -> None:
    quantized = quantize_dynamic_module(mlp(), per_channel=False)
    tensors = encode_state(quantized.state_dict())
    tensors["stray"] = torch.zeros(1)
    with pytest.raises(KeyError, match="stray"):
        decode_state(tensors, quantized.state_dict())


def test_structured_shapes_rebuild_a_pruned_skeleton() -> None:
    model = create_model("cifar_cnn", **KWARGS)
    model.conv1 = nn.Conv2d(1, 5, 3, padding=1)
    model.conv2 = nn.Conv2d(5, 7, 3, padding=1)
    model.fc = nn.Linear(7 * 4, 10)
    shapes = layer_shapes(model)
    fresh = apply_shapes(create_model("cifar_cnn", **KWARGS), shapes)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))
    assert shapes["conv2"] == {"in_channels": 5, "out_channels": 7, "groups": 1}


def test_sparsity_and_weight_counts() -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight[:2] = 0
    assert sparsity(model) == 0.5
    assert count_weights(model) == 16
    quantized = quantize_dynamic_module(mlp(), per_channel=False)
    assert count_weights(quantized) == count_weights(mlp())


def test_default_names_and_the_variant_rule() -> None:
    assert default_name(["prune_structured", "finetune", "quantize_static"]) == "pruned-ft-int8"
    assert default_name(["quantize_dynamic"], "slim") == "slim-int8dyn"
    job = CompressJob.model_validate(
        {
            "source": "m",
            "steps": [
                {"method": "prune_l1", "variant": "sparse"},
                {"method": "finetune"},
                {"method": "quantize_dynamic"},
            ],
        }
    )
    assert planned_variants(job.steps) == [(0, "sparse"), (2, "l1-ft-int8dyn")]


def test_gates_and_the_best_variant() -> None:
    job = CompressJob.model_validate(
        {
            "source": "m",
            "steps": [{"method": "prune_l1"}],
            "gates": {"max_accuracy_drop": 1.0, "min_speedup": 2.0},
        }
    )
    assert gate(variant_report("a", 2.5, -0.5), job) == []
    assert len(gate(variant_report("b", 1.5, -3.0), job)) == 2
    reports = [
        variant_report("slow", 2.0, 0),
        variant_report("fast", 3.0, -0.9),
        variant_report("bad", 9.0, -5),
    ]
    reports[2].passed = False
    chosen = best(reports)
    assert chosen is not None and chosen.variant == "fast"
    assert best([reports[2]]) is None


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([3.0], 95) == 3.0


def test_result_table_lists_the_source_then_each_variant() -> None:
    from shared.jobs import TABLE_COLUMNS, CompressResult

    variant = variant_report("int8", 2.5, -0.3)
    variant.registered = True
    failed = variant_report("tiny", 1.1, -9.0)
    failed.passed = False
    result = CompressResult(
        job_id="j",
        source="m:1:base",
        version=1,
        baseline=variant_report("base", 1.0, 0.0),
        variants=[variant, failed],
        seconds=1.0,
        worker="w",
        device="cpu",
    )
    header, rows = result.table()
    assert header == list(TABLE_COLUMNS) and len(rows) == 3
    assert [r[0] for r in rows] == ["base", "int8", "tiny"]
    assert [r[-1] for r in rows] == ["source", "registered", "failed gates"]
    assert rows[1][header.index("speed-up b1/b32")] == "1.00x/2.50x"
    assert rows[1][header.index("d acc pt")] == "-0.30"


def test_a_serving_process_rebuilds_int8_without_importing_compression(tmp_path: Path) -> None:
    """build_module finds the compression recipes on its own (a fresh interpreter)."""
    quantized = quantize_dynamic_module(mlp(), per_channel=False)
    manifest = Manifest(
        arch="mlp",
        arch_kwargs={"hidden": 32, "depth": 2, **KWARGS},
        input_shape=[1, 8, 8],
        num_classes=10,
        recipe=[{"method": "quantize_dynamic", "per_channel": False, "engine": "x86"}],
    )
    (tmp_path / "w.safetensors").write_bytes(to_safetensors(encode_state(quantized.state_dict())))
    (tmp_path / "m.json").write_text(manifest.model_dump_json())
    x = torch.randn(3, 1, 8, 8)
    save_file({"x": x}, tmp_path / "x.safetensors")
    code = """
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from shared.manifest import Manifest
from workers.artifacts import from_safetensors
from workers.modelio import build_module
d = Path(sys.argv[1])
m = build_module(Manifest.model_validate_json((d / "m.json").read_text()),
                 from_safetensors((d / "w.safetensors").read_bytes(), what="w"))
save_file({"y": m(load_file(d / "x.safetensors")["x"])}, d / "y.safetensors")
"""
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=root, timeout=120)
    served = load_file(tmp_path / "y.safetensors")["y"]
    assert torch.equal(served, quantized(x))
