"""The model cache: hits and misses, LRU eviction under a byte budget, one load per digest,
fast paths that keep the answers, listeners for metrics, and the ONNX Runtime backend."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.errors import InvalidJob, UnsafeArtifact
from shared.manifest import Manifest
from workers.artifacts import ArtifactStore
from workers.batching import timed_forward
from workers.cache import ModelCache, load_model
from workers.zoo import create_model

CPU = torch.device("cpu")


def store_model(
    store: ArtifactStore, arch: str, seed: int, **update: object
) -> tuple[str, nn.Module]:
    torch.manual_seed(seed)
    kwargs = {"image_size": 8, "hidden": 16} if arch == "mlp" else {}
    module = create_model(arch, **kwargs).eval()
    size = 8 if arch == "mlp" else 32
    manifest = Manifest(
        arch=arch, arch_kwargs=kwargs, input_shape=[3, size, size], num_classes=10, **update
    )
    return store.put_model(module.state_dict(), manifest).sha256, module


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


def test_second_get_is_a_hit_and_listeners_hear_both(store: ArtifactStore) -> None:
    digest, _ = store_model(store, "mlp", 0)
    events: list[str] = []
    cache = ModelCache(store=store, device=CPU, budget_bytes=10**9)
    cache.listeners.append(lambda event, model: events.append(f"{event}:{model.digest}"))
    first, hit1, load_ms = cache.get(digest)
    second, hit2, again_ms = cache.get(digest)
    assert (hit1, hit2) == (False, True) and load_ms > 0 and again_ms == 0
    assert first is second and cache.digests() == [digest]
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert events == [f"miss:{digest}", f"hit:{digest}"]


def test_least_recently_used_model_is_evicted_over_budget(store: ArtifactStore) -> None:
    a, _ = store_model(store, "mlp", 1)
    b, _ = store_model(store, "mlp", 2)
    c, _ = store_model(store, "mlp", 3)
    one = ModelCache(store=store, device=CPU, budget_bytes=1).get(a)[0].nbytes
    evicted: list[str] = []
    cache = ModelCache(store=store, device=CPU, budget_bytes=2 * one)
    cache.listeners.append(lambda event, m: evicted.append(m.digest) if event == "evict" else None)
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now the most recently used
    cache.get(c)
    assert evicted == [b] and sorted(cache.digests()) == sorted([a, c])
    assert cache.used_bytes() <= 2 * one and cache.stats.evictions == 1


def test_a_model_larger_than_the_budget_is_still_served(store: ArtifactStore) -> None:
    digest, _ = store_model(store, "mlp", 4)
    cache = ModelCache(store=store, device=CPU, budget_bytes=1)
    _, hit, _ = cache.get(digest)
    assert not hit and cache.digests() == [digest]


def test_concurrent_requests_load_a_model_once(store: ArtifactStore) -> None:
    digest, _ = store_model(store, "mlp", 5)
    cache = ModelCache(store=store, device=CPU, budget_bytes=10**9)
    barrier = threading.Barrier(6)

    def get(_: int) -> bool:
        barrier.wait()
        return cache.get(digest)[1]

    with ThreadPoolExecutor(6) as pool:
        hits = list(pool.map(get, range(6)))
    assert hits.count(False) == 1 and cache.stats.misses == 1


def test_channels_last_changes_layout_not_answers(store: ArtifactStore) -> None:
    digest, module = store_model(store, "cifar_cnn", 6)
    batch = torch.randn(4, 3, 32, 32)
    fast = load_model(store, digest, CPU, channels_last=True)
    plain = load_model(store, digest, CPU, channels_last=False)
    with torch.inference_mode():
        expected = module(batch)
    torch.testing.assert_close(fast.forward(batch), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain.forward(batch), expected, rtol=1e-4, atol=1e-4)


def test_backends_are_cached_apart(store: ArtifactStore) -> None:
    digest, _ = store_model(store, "mlp", 7)
    cache = ModelCache(store=store, device=CPU, budget_bytes=10**9)
    eager, _, _ = cache.get(digest, "eager")
    default, hit, _ = cache.get(digest)
    assert eager.backend == default.backend == "eager" and not hit
    assert eager.key == default.key  # the batcher may merge them: same weights, same backend


def test_onnx_variant_is_served_through_onnx_runtime(store: ArtifactStore) -> None:
    from workers.compression.export import put_export, to_onnx

    torch.manual_seed(8)
    module = create_model("mlp", image_size=8, hidden=16).eval()
    sample = torch.randn(2, 3, 8, 8)
    blob, _ = to_onnx(module, sample, opset=None, exporter="torchscript")
    path, sha = put_export(store, blob, "onnx")
    manifest = Manifest(
        arch="mlp",
        arch_kwargs={"image_size": 8, "hidden": 16},
        input_shape=[3, 8, 8],
        num_classes=10,
        backend="onnx",
        lineage={"exports": [{"format": "onnx", "path": path, "sha256": sha}]},
    )
    digest = store.put_model(module.state_dict(), manifest).sha256
    cache = ModelCache(store=store, device=CPU, budget_bytes=10**9)
    served, _, _ = cache.get(digest)
    eager, _, _ = cache.get(digest, "eager")
    batch = torch.randn(5, 3, 8, 8)
    assert served.backend == "onnx" and eager.backend == "eager"
    with torch.inference_mode():
        expected = module(batch)
    torch.testing.assert_close(served.forward(batch), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eager.forward(batch), expected, rtol=1e-5, atol=1e-5)


def test_onnx_asked_of_a_variant_without_an_export_is_an_input_error(
    store: ArtifactStore,
) -> None:
    digest, _ = store_model(store, "mlp", 9)
    with pytest.raises(InvalidJob, match="no ONNX export"):
        ModelCache(store=store, device=CPU, budget_bytes=10**9).get(digest, "onnx")


def test_a_backend_that_would_run_archive_code_is_refused(store: ArtifactStore) -> None:
    digest, _ = store_model(store, "mlp", 10, backend="torchscript")
    with pytest.raises(UnsafeArtifact):
        load_model(store, digest, CPU)


def test_cache_events_and_job_latencies_become_prometheus_metrics(store: ArtifactStore) -> None:
    from prometheus_client import generate_latest

    from shared.jobs import InferResult, Latency
    from workers.metrics import FleetMetrics

    a, _ = store_model(store, "mlp", 11)
    b, _ = store_model(store, "mlp", 12)
    cache = ModelCache(store=store, device=CPU, budget_bytes=1)
    metrics = FleetMetrics("cpu", cache.used_bytes)
    cache.listeners.append(metrics.on_cache_event)
    cache.get(a)
    cache.get(a)
    cache.get(b)  # evicts a
    metrics.observe(
        InferResult(
            job_id="j", model="m", version=1, variant="base", model_digest=a, predictions=[],
            latency=Latency(queued_ms=3, compute_ms=1.5, total_worker_ms=2), cache_hit=True,
            batch_size=4, worker="w", device="cpu",
        )
    )  # fmt: skip
    values = samples(generate_latest(metrics.registry).decode())
    assert values["torchfleet_cache_hits_total", (("device", "cpu"),)] == 1
    assert values["torchfleet_cache_misses_total", (("device", "cpu"),)] == 2
    assert values["torchfleet_cache_evictions_total", (("device", "cpu"),)] == 1
    assert values["torchfleet_cache_bytes", (("device", "cpu"),)] == cache.used_bytes()
    job = (("device", "cpu"), ("model", "m"), ("variant", "base"))
    assert values["torchfleet_batch_size_sum", job] == 4
    assert values["torchfleet_compute_ms_count", job] == 1
    assert values["torchfleet_queue_wait_ms_bucket", (job[0], ("le", "5.0"), *job[1:])] == 1
    assert values["torchfleet_queue_wait_ms_bucket", (job[0], ("le", "2.0"), *job[1:])] == 0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_compile_that_fails_falls_back_to_eager(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_compile(module: nn.Module, **_: object) -> object:
        def run(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    digest, module = store_model(store, "mlp", 13)
    model = load_model(store, digest, CPU, backend="compile")
    batch = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = module(batch)
    assert model.backend == "eager"
    torch.testing.assert_close(model.forward(batch), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_serving_autocasts_times_with_events_and_answers_like_the_cpu(
    store: ArtifactStore,
) -> None:
    digest, module = store_model(store, "cifar_cnn", 14)
    model = load_model(store, digest, torch.device("cuda"))
    batch = torch.randn(8, 3, 32, 32)
    logits, compute_ms = timed_forward(model, batch)
    with torch.inference_mode():
        expected = module(batch)
    assert model.device.type == "cuda" and logits.device.type == "cpu"
    assert logits.dtype == torch.float32 and compute_ms > 0
    torch.testing.assert_close(logits, expected, rtol=0.05, atol=0.05)  # bf16 autocast
    assert (logits.argmax(1) == expected.argmax(1)).float().mean() >= 0.75
