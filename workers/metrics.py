"""Prometheus metrics of one worker: latency histograms per model, cache counters, memory gauges.

:class:`FleetMetrics` owns its own registry (so tests can build as many as they like); the
worker builds one at start-up with :func:`start_metrics`, which also serves it over HTTP
on ``settings.metrics_port`` (off when unset). Everything here is a no-op until then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.jobs import InferResult

log = logging.getLogger("torchfleet.metrics")

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
JOB_LABELS = ("model", "variant", "device")
LATENCY_FIELDS = ("queued_ms", "batch_wait_ms", "compute_ms", "total_worker_ms")


class _Gauges(Collector):
    """Gauges read at scrape time: bytes held by the model cache, GPU memory in use."""

    def __init__(self, device: str, cached_bytes: Callable[[], int], gpu: Any = None) -> None:
        self.device = device
        self.cached_bytes = cached_bytes
        self.gpu = gpu

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cached = GaugeMetricFamily(
            "torchfleet_cache_bytes", "Bytes of weights held by the model cache.", labels=["device"]
        )
        cached.add_metric([self.device], float(self.cached_bytes()))
        yield cached
        if self.gpu is not None:
            import torch

            memory = GaugeMetricFamily(
                "torchfleet_gpu_memory_bytes",
                "GPU memory held by this worker's tensors (allocated and reserved).",
                labels=["device", "kind"],
            )
            memory.add_metric(
                [self.device, "allocated"], float(torch.cuda.memory_allocated(self.gpu))
            )
            memory.add_metric(
                [self.device, "reserved"], float(torch.cuda.memory_reserved(self.gpu))
            )
            yield memory


class PathMetrics:
    """The latency histograms and failure counter of one way in: Celery jobs (``torchfleet_``)
    or online lane requests (``torchfleet_lane_``), with the same labels."""

    def __init__(self, registry: CollectorRegistry, prefix: str, failures: str, what: str) -> None:
        histogram = _factory(Histogram, registry)
        self.queued_ms = histogram(
            f"{prefix}queue_wait_ms", f"Producer submit to worker start, per {what}.",
            LATENCY_BUCKETS_MS,
        )  # fmt: skip
        self.batch_wait_ms = histogram(
            f"{prefix}batch_wait_ms", "Time waiting for a micro-batch.", LATENCY_BUCKETS_MS
        )
        self.compute_ms = histogram(
            f"{prefix}compute_ms", "Forward pass of the (micro-)batch.", LATENCY_BUCKETS_MS
        )
        self.total_ms = histogram(
            f"{prefix}worker_total_ms", f"Worker time of one {what}, end to end.",
            LATENCY_BUCKETS_MS,
        )  # fmt: skip
        self.batch_size = histogram(
            f"{prefix}batch_size", f"Inputs in the forward that served a {what}.", BATCH_BUCKETS
        )
        self.failures = Counter(
            failures, f"Inference {what}s that failed, by error code.", ["code"], registry=registry
        )

    def children(self, labels: tuple[str, ...]) -> tuple[Any, ...]:
        """The labelled histograms, in :data:`LATENCY_FIELDS` order, then the batch size."""
        histograms = (self.queued_ms, self.batch_wait_ms, self.compute_ms, self.total_ms)
        return (*(h.labels(*labels) for h in histograms), self.batch_size.labels(*labels))

    @staticmethod
    def observe(children: tuple[Any, ...], latency: Mapping[str, Any], batch: float) -> None:
        """Record one answer: its latency breakdown (ms) and the batch that served it."""
        for child, name in zip(children, LATENCY_FIELDS, strict=False):
            child.observe(float(latency[name]))
        children[-1].observe(batch)


class FleetMetrics:
    """The worker's metrics, in a registry of their own."""

    def __init__(self, device: str, cached_bytes: Callable[[], int], gpu: Any = None) -> None:
        self.device = device
        self.registry = CollectorRegistry()
        self.jobs = PathMetrics(self.registry, "torchfleet_", "torchfleet_infer_failures", "job")
        self.lane = PathMetrics(
            self.registry, "torchfleet_lane_", "torchfleet_lane_failures", "lane request"
        )
        self.cache_events = {
            event: Counter(
                f"torchfleet_cache_{name}",
                f"Model cache {name} on this worker.",
                ["device"],
                registry=self.registry,
            )
            for event, name in (("hit", "hits"), ("miss", "misses"), ("evict", "evictions"))
        }
        self.registry.register(_Gauges(device, cached_bytes, gpu))

    def observe(self, result: InferResult) -> None:
        """Record one answered inference job."""
        children = self.jobs.children((result.model, result.variant, self.device))
        self.jobs.observe(children, result.latency.model_dump(), result.batch_size)

    def observe_lane(self, records: Iterable[Mapping[str, str]]) -> None:
        """Record a lane batch from its stats records (the same fields as a job's): answers
        in the latency histograms, refusals in the failure counter by code. A batch's
        answers share a few label sets: each is looked up once."""
        labelled: dict[tuple[str, ...], tuple[Any, ...]] = {}
        for record in records:
            outcome = record.get("outcome", "error")
            if outcome != "success":
                self.lane.failures.labels(outcome).inc()
                continue
            labels = (record["model"], record["variant"], self.device)
            children = labelled.get(labels)
            if children is None:
                children = labelled[labels] = self.lane.children(labels)
            self.lane.observe(children, record, float(record["batch_size"]))

    def on_cache_event(self, event: str, _model: object = None) -> None:
        """A listener for :class:`workers.cache.ModelCache`: ``hit``, ``miss`` or ``evict``."""
        counter = self.cache_events.get(event)
        if counter is not None:
            counter.labels(self.device).inc()

    def failed(self, code: str) -> None:
        self.jobs.failures.labels(code).inc()


def _factory(kind: type[Histogram], registry: CollectorRegistry) -> Callable[..., Histogram]:
    def make(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return kind(name, doc, JOB_LABELS, buckets=buckets, registry=registry)

    return make


_metrics: FleetMetrics | None = None


def current() -> FleetMetrics | None:
    """The worker's metrics once :func:`start_metrics` ran (None before, and in producers)."""
    return _metrics


def start_metrics(
    device: str,
    cached_bytes: Callable[[], int],
    *,
    port: int | None,
    addr: str = "0.0.0.0",
    gpu: Any = None,
) -> FleetMetrics:
    """Build the worker's metrics and serve them on ``port`` (no server when ``port`` is None)."""
    global _metrics
    if _metrics is None:
        _metrics = FleetMetrics(device, cached_bytes, gpu)
        if port is not None:
            try:
                start_http_server(port, addr=addr, registry=_metrics.registry)
            except OSError as e:  # a busy port must not stop the worker from serving jobs
                log.error("metrics port %s:%d unavailable (%s); metrics not served", addr, port, e)
            else:
                log.info("metrics served on http://%s:%d/metrics", addr, port)
    return _metrics
