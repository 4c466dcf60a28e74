"""Prometheus metrics of the gateway, all on one registry so tests (and workers) can own theirs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, multiprocess

from gateway.background import running

__all__ = ["WORKER_SAMPLE_S", "GatewayMetrics"]

# Latency buckets in seconds: telephony cares about 10 ms steps up to a second, then coarser.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
CODEC_BUCKETS = (2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3)
CALL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# With several workers, how often each one writes its process metrics and task count for the scrape.
WORKER_SAMPLE_S = 2.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client; set by the supervisor


def _multiprocess() -> bool:
    """True in a worker of several: metrics go to files in PROMETHEUS_MULTIPROC_DIR, summed on scrape."""
    return bool(os.environ.get(MULTIPROC_ENV))


def _count_tasks() -> float:
    """Tasks of the running event loop (0 when read outside one)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0


class GatewayMetrics:
    """Every metric the gateway exports. One instance per application (pass a fresh registry in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # In multiprocess mode (several workers, PROMETHEUS_MULTIPROC_DIR set) gauges sum over live workers.
        self.active_calls = Gauge(
            "gateway_active_calls", "Calls in progress", registry=r, multiprocess_mode="livesum"
        )
        self.max_calls = Gauge(
            "gateway_max_calls",
            "Calls this instance accepts at once",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.calls = Counter("gateway_calls", "Calls ended, by outcome", ["outcome"], registry=r)
        self.call_duration = Histogram(
            "gateway_call_duration_seconds", "Call duration", buckets=CALL_BUCKETS, registry=r
        )
        self.frames_in = Counter("gateway_frames_in", "Caller media frames received", registry=r)
        self.frames_out = Counter("gateway_frames_out", "Bot media messages sent to the provider", registry=r)
        self.upstream_connect = Histogram(
            "gateway_upstream_connect_seconds",
            "Realtime handshake time",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Realtime error events and failures, by code", ["code"], registry=r
        )
        self.response_latency = Histogram(
            "gateway_response_latency_seconds",
            "Caller speech stopped (the end of the caller's voiced audio, as placed by VAD) -> first bot "
            "audio sent to the provider",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter("gateway_barge_ins", "Caller interruptions of bot audio", registry=r)
        self.barge_in_latency = Histogram(
            "gateway_barge_in_clear_seconds",
            "speech_started received -> clear sent to the provider",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.truncates = Counter("gateway_truncates", "conversation.item.truncate sent", registry=r)
        self.cancels = Counter("gateway_cancels", "response.cancel sent", registry=r)
        self.benign_races = Counter(
            "gateway_benign_races",
            "Expected realtime races (cancel with no active response, truncate past the end)",
            ["kind"],
            registry=r,
        )
        self.command_errors = Counter(
            "gateway_realtime_command_errors",
            "Realtime error events by the command that caused them (TruncateItem, CancelResponse, ...)",
            ["command", "code"],
            registry=r,
        )
        self.flushed_audio = Counter(
            "gateway_flushed_audio_seconds", "Bot audio discarded by clear (sent, not heard)", registry=r
        )
        self.dropped_deltas = Counter(
            "gateway_dropped_deltas", "Bot audio deltas dropped after an interruption", registry=r
        )
        self.codec_time = Histogram(
            "gateway_codec_seconds",
            "Transcoding time per message, by direction",
            ["direction"],
            buckets=CODEC_BUCKETS,
            registry=r,
        )
        self.added_latency = Histogram(
            "gateway_added_latency_seconds",
            "Time the gateway adds per message: caller frame in -> append out (caller), "
            "realtime delta in -> first media out (bot)",
            ["direction"],
            buckets=(5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1),
            registry=r,
        )
        self.upstream_reconnects = Counter(
            "gateway_upstream_reconnects",
            "Realtime sessions replaced mid-call, by reason (drop, expiry)",
            ["reason"],
            registry=r,
        )
        self.dropped_frames = Counter(
            "gateway_dropped_frames", "Caller frames dropped, by reason (flood)", ["reason"], registry=r
        )
        self.protocol_violations = Counter(
            "gateway_protocol_violations", "Unusable messages from a peer", ["peer"], registry=r
        )
        self.rejected_requests = Counter(
            "gateway_rejected_requests",
            "Requests refused (bad signature, not ready)",
            ["route", "reason"],
            registry=r,
        )
        self.dtmf = Counter("gateway_dtmf", "DTMF digits received", registry=r)
        self.tool_calls = Counter(
            "gateway_tool_calls",
            "The bot's tool calls by tool (unknown: a name the call was not offered) and result (ok, "
            "error, refused, unknown, cancelled)",
            ["tool", "result"],
            registry=r,
        )
        self.tool_latency = Histogram(
            "gateway_tool_webhook_seconds",
            "An operator's tool: the model's call received -> the webhook's answer (or its failure)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.model_latency = Histogram(
            "gateway_model_latency_seconds",
            "speech_stopped event received -> first bot audio sent (the service's share of a response, "
            "without VAD's silence window)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.emulator_in_use = Gauge(
            "gateway_emulator_in_use",
            "1 while calls go to the embedded realtime emulator (a synthetic voice), not a real service",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.upstream_healthy = Gauge(
            "gateway_upstream_healthy",
            "1 while realtime handshakes succeed (or have failed for less than UPSTREAM_UNHEALTHY_AFTER_S); "
            "with several workers, 1 while any live worker's do",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.upstream_probes = Counter(
            "gateway_upstream_probes",
            "Readiness probes of the realtime endpoint, by result (ok or the failure code)",
            ["result"],
            registry=r,
        )
        # The native SIP leg (SIP_LISTEN): what arrived, what was refused or dropped.
        self.sip_messages = Counter(
            "gateway_sip_messages",
            "SIP messages taken in (not throttled), by kind (request, response)",
            ["kind"],
            registry=r,
        )
        self.sip_malformed = Counter(
            "gateway_sip_malformed", "SIP messages (or TCP streams) that could not be parsed", registry=r
        )
        self.sip_refused = Counter(
            "gateway_sip_refused", "SIP requests refused, by response status", ["status"], registry=r
        )
        self.sip_throttled = Counter(
            "gateway_sip_throttled",
            "SIP messages dropped silently: their source was over SIP_RATE_LIMIT",
            registry=r,
        )
        self.rtp_stray_packets = Counter(
            "gateway_rtp_stray_packets",
            "RTP packets from a source other than the one the call latched on (dropped)",
            registry=r,
        )
        self.sip_registered = Gauge(
            "gateway_sip_registered",
            "1 while the gateway's registration with its SIP registrar is current",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Leak watch: resident memory and open file descriptors of the process, and its asyncio tasks.
        # One process: read at scrape time. Several workers: the scrape reads only the metrics files, so each
        # worker copies its own values into "liveall" gauges (a series per live worker, `pid` label) when
        # created and then while `sample_worker` runs.
        self._process = ProcessCollector(registry=None if _multiprocess() else r)
        self._process_gauges: dict[str, Gauge] = {}
        if _multiprocess():
            self.tasks = Gauge(
                "gateway_asyncio_tasks",
                "asyncio tasks alive in this worker",
                registry=r,
                multiprocess_mode="liveall",
            )
            self._process_gauges = {
                sample.name: Gauge(sample.name, family.documentation, registry=r, multiprocess_mode="liveall")
                for family in self._process.collect()
                for sample in family.samples
            }
            self._sample()  # the scrape may come before the app starts
        else:
            self.tasks = Gauge("gateway_asyncio_tasks", "asyncio tasks alive in this process", registry=r)
            self.tasks.set_function(_count_tasks)

    def exposition_registry(self) -> CollectorRegistry:
        """What /metrics serves: this registry, or with several workers the sum over all of them."""
        if not _multiprocess():
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged

    def any_worker_healthy(self) -> bool | None:
        """With several workers: whether any live worker reaches the realtime backend (their shared
        verdict, so /readyz answers the same whichever worker the probe lands on); None with one process."""
        if not _multiprocess():
            return None
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        value = merged.get_sample_value("gateway_upstream_healthy")
        return bool(value)

    async def sample_worker(self, _app: object) -> AsyncIterator[None]:
        """aiohttp cleanup context: with several workers, refresh this worker's process metrics and task
        count every WORKER_SAMPLE_S while the app runs; with one process it does nothing."""
        if not _multiprocess():
            yield
            return
        async with running(self._sample_every(WORKER_SAMPLE_S)):
            yield

    async def _sample_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._sample()

    def _sample(self) -> None:
        self.tasks.set(_count_tasks())
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._process_gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)
