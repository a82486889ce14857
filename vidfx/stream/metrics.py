"""Prometheus metrics of one node, in their own registry (several nodes may live in one process in tests)."""

from __future__ import annotations

import platform

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import vidfx

DROP_REASONS = (
    "overload",  # input outran the model: oldest pending frames dropped
    "malformed",  # header/payload broke the protocol
    "unauthorized",  # missing or wrong token beyond loopback
    "too_many_sessions",  # a new stream while max_sessions are open
    "resized",  # pending frames of an older size when the stream changed size
    "gap",  # seq numbers skipped before reaching the node (publisher/HWM drops upstream)
    "output_overflow",  # a slow consumer's output queue was full
    "closed",  # pending frames of a session closed by idle timeout or shutdown
    "error",  # a chunk failed in the model
    "foreign",  # frames for a stream owned by another publisher, without its key
    "quota",  # a publisher connection over its frame rate or stream count
)

# Latency buckets from 5 ms to 10 s: a chunk on 2 CPU cores takes tens to hundreds of ms.
_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, model_name: str = "", device: str = "cpu") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_received = Counter("vidfx_frames_received", "Frames received (valid or not)", registry=r)
        self.frames_emitted = Counter("vidfx_frames_emitted", "Frames sent out", registry=r)
        self.frames_dropped = Counter("vidfx_frames_dropped", "Frames dropped, by reason", ["reason"], registry=r)
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(reason)  # exported as 0 from the start, so rates work at once
        self.chunks = Counter("vidfx_chunks", "Chunks processed by the model", registry=r)
        self.chunk_latency = Histogram(
            "vidfx_chunk_latency_seconds",
            "Model worker time of one call: a batch of chunks (and the last batch's decode)",
            buckets=_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "vidfx_e2e_latency_seconds", "Frame received → frame sent, inside the node", buckets=_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "vidfx_batch_sessions", "Sessions' chunks per model call", buckets=(1, 2, 3, 4, 6, 8, 16), registry=r
        )
        self.sessions = Gauge("vidfx_sessions", "Open sessions", registry=r)
        self.queue_depth = Gauge("vidfx_queue_depth", "Input frames waiting for the model, all sessions", registry=r)
        self.control = Counter(
            "vidfx_control_messages", "Control messages, by op and result", ["op", "result"], registry=r
        )
        self.output_subscribers = Gauge("vidfx_output_subscribers", "Subscribers on the output socket", registry=r)
        self.build = Info("vidfx_build", "Build information", registry=r)
        self.build.info(
            {
                "version": vidfx.__version__,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "model": model_name,
                "device": device,
            }
        )

    def drop(self, reason: str, n: int = 1) -> None:
        if n > 0:
            self.frames_dropped.labels(reason).inc(n)
            self._dropped[reason] += n

    def dropped(self) -> dict[str, int]:
        """Frames dropped since start, by reason (for status replies)."""
        return dict(self._dropped)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
