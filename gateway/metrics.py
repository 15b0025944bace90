"""Prometheus metrics of one node, on a registry of its own (no process-wide globals).

OpenFaaS-compatible names where OpenFaaS has the same thing
(``gateway_function_invocation_total{function_name,code}``, ``gateway_functions_seconds``,
``gateway_service_count``), plus pool gauges read at scrape time, histograms of worker
spawn and cold-start times, where calls were served (``edgefaas_invocations_total``,
``edgefaas_forward_added_seconds``), and what each sandboxed function uses, from its cgroups
(``edgefaas_function_memory_bytes``, ``..._cpu_seconds_total``, ``..._oom_kills_total``,
``..._cpu_throttled_seconds_total``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.sandbox.sandboxes import Usage

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
SPAWN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

Snapshot = Callable[[], list[dict[str, Any]]]
UsageByFunction = Callable[[], dict[str, Usage]]


class SandboxCollector(Collector):
    """Each sandboxed function's use of memory and CPU, read from its cgroups at scrape."""

    def __init__(self, usage: UsageByFunction) -> None:
        self._usage = usage

    def collect(self) -> Iterator[Metric]:
        labels = ["function"]
        memory = GaugeMetricFamily(
            "edgefaas_function_memory_bytes",
            "Memory of the function's zygote and workers (its cgroups), with its /tmp.",
            labels=labels,
        )
        cpu = CounterMetricFamily(
            "edgefaas_function_cpu_seconds", "CPU time of the function's processes.", labels=labels
        )
        throttled = CounterMetricFamily(
            "edgefaas_function_cpu_throttled_seconds",
            "Time the function's processes were held back by its sandbox.cpu quota.",
            labels=labels,
        )
        oom = CounterMetricFamily(
            "edgefaas_function_oom_kills",
            "Workers the kernel killed for going over memory_mb.",
            labels=labels,
        )
        for function, usage in sorted(self._usage().items()):
            memory.add_metric([function], usage.memory_bytes)
            cpu.add_metric([function], usage.cpu_seconds)
            throttled.add_metric([function], usage.throttled_seconds)
            oom.add_metric([function], usage.oom_kills)
        yield from (memory, cpu, throttled, oom)


class PoolCollector(Collector):
    """Pool gauges computed from the supervisor's snapshot when Prometheus scrapes."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        pools = self._snapshot()
        workers = GaugeMetricFamily(
            "edgefaas_pool_workers", "Workers by state.", labels=["function", "state"]
        )
        in_flight = GaugeMetricFamily(
            "edgefaas_pool_in_flight", "Calls running in workers.", labels=["function"]
        )
        queued = GaugeMetricFamily(
            "edgefaas_pool_queue_depth", "Calls waiting for a worker.", labels=["function"]
        )
        state = GaugeMetricFamily(
            "edgefaas_pool_state", "1 for the pool's current state.", labels=["function", "state"]
        )
        for pool in pools:
            for name, count in pool["workers"].items():
                workers.add_metric([pool["name"], name], count)
            in_flight.add_metric([pool["name"]], pool["in_flight"])
            queued.add_metric([pool["name"]], pool["queue_depth"])
            state.add_metric([pool["name"], pool["state"]], 1)
        services = GaugeMetricFamily("gateway_service_count", "Functions deployed on this node.")
        services.add_metric([], len(pools))
        yield from (workers, in_flight, queued, state, services)


class RouteCollector(Collector):
    """``edgefaas_invocations_total`` from plain counts: a dict increment per call costs a
    tenth of a Counter's locked one, and every call makes one."""

    def __init__(self, counts: dict[tuple[str, str, str], int]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "edgefaas_invocations",
            "Calls by function, where they were served (local, peer:NODE, cloud, none) and why.",
            labels=["function", "served_by", "reason"],
        )
        for labels, count in list(self._counts.items()):
            family.add_metric(list(labels), count)
        yield family


class Metrics:
    """The node's metrics. Also the pools' observer (spawn and cold-start timings)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._invocations = Counter(
            "gateway_function_invocation",
            "Calls by function and HTTP status.",
            ["function_name", "code"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "gateway_functions_seconds",
            "Time from request to response, by function.",
            ["function_name"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._spawn = Histogram(
            "edgefaas_worker_spawn_seconds",
            "Time from asking the zygote for a worker to READY.",
            ["function"],
            buckets=SPAWN_BUCKETS,
            registry=self.registry,
        )
        self._cold = Histogram(
            "edgefaas_cold_start_seconds",
            "Time to answer a call that arrived when no worker was serving.",
            ["function"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.routes: dict[tuple[str, str, str], int] = {}  # counted on the hot path
        self.registry.register(RouteCollector(self.routes))
        self._forward = Histogram(
            "edgefaas_forward_added_seconds",
            "Time a forwarded call spent beyond what the serving node took, by tier.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._async_runs = Counter(
            "edgefaas_async_runs",
            "Runs of asynchronous calls on this node, by function and how they ended "
            "(finished, retry, dead).",
            ["function", "outcome"],
            registry=self.registry,
        )
        self._async_seconds = Histogram(
            "edgefaas_async_run_seconds",
            "Time a run of an asynchronous call took on this node, by function.",
            ["function"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def watch_pools(self, snapshot: Snapshot) -> None:
        self.registry.register(PoolCollector(snapshot))

    def watch_sandboxes(self, usage: UsageByFunction) -> None:
        self.registry.register(SandboxCollector(usage))

    def observe_call(self, function: str, status: int, seconds: float) -> None:
        children = self._children.get((function, status))
        if children is None:
            children = (
                self._invocations.labels(function, str(status)),
                self._seconds.labels(function),
            )
            self._children[(function, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_route(self, function: str, served_by: str, reason: str) -> None:
        key = (function, served_by, reason)
        routes = self.routes
        routes[key] = routes.get(key, 0) + 1

    def observe_forward(self, tier: str, seconds: float) -> None:
        self._forward.labels(tier).observe(seconds)

    def observe_async_run(self, function: str, outcome: str, seconds: float) -> None:
        self._async_runs.labels(function, outcome).inc()
        self._async_seconds.labels(function).observe(seconds)

    def worker_spawned(self, function: str, seconds: float) -> None:
        self._spawn.labels(function).observe(seconds)

    def cold_start(self, function: str, seconds: float) -> None:
        self._cold.labels(function).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
