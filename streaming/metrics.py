"""Prometheus metrics of the streaming app, served at ``GET /metrics`` (see docs/operations.md).

Every metric object lives here, with one small function per event, so the code that emits them
(services, the instance watcher) needs a single line per event and never touches a label by hand.
Metrics are per process (one daphne process is one instance); Prometheus sums across instances.

Cancel latency is measured on the instance running the stream, from the moment the cancel reached
that instance (the request itself when it landed there, else the watcher reading the flag or the
push notice arriving) until the stream had stopped: model request closed, no more chunks.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest

#: Cancel paths: the request landed on the stream's instance, the flag read by the watcher, a push.
LOCAL: Final = "local"
FLAG: Final = "flag"
PUSH: Final = "push"

STREAMS_ACTIVE = Gauge("chat_streams_active", "Streams running on this instance.")
STREAMS_FINISHED = Counter(
    "chat_streams_finished", "Streams that ended, by final status.", ["status"]
)
CANCEL_REQUESTS = Counter(
    "chat_cancel_requests",
    "Cancel requests by the path they took and its result (one request may take several paths).",
    ["path", "result"],
)
CANCEL_LATENCY = Histogram(
    "chat_cancel_latency_seconds",
    "From a cancel reaching the stream's instance (by path) until the stream had stopped.",
    ["path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TIME_TO_FIRST_CHUNK = Histogram(
    "chat_time_to_first_chunk_seconds",
    "From a stream's start until its first chunk was sent to the client.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
CHUNKS_SENT = Counter("chat_chunks_sent", "Chunks sent to clients.")
REDIS_ERRORS = Counter(
    "chat_redis_errors", "Failed or timed-out Redis calls, by operation.", ["operation"]
)

#: message_id -> (path, monotonic time the cancel reached this instance); first path wins.
_pending_cancels: dict[str, tuple[str, float]] = {}
#: Entries older than this are dropped (a cancel that raced with the stream's end).
_PENDING_MAX_AGE = 600.0


def stream_started() -> None:
    STREAMS_ACTIVE.inc()


def stream_finished(message_id: str, status: str) -> None:
    """Called once per stream after it ended (saved or not), with its final status."""
    STREAMS_ACTIVE.dec()
    STREAMS_FINISHED.labels(status=status).inc()
    _pending_cancels.pop(message_id, None)


def chunk_sent(*, chunks: int, started_at: float) -> None:
    """Called after each chunk reached the client; ``started_at`` is the wall-clock start."""
    CHUNKS_SENT.inc()
    if chunks == 1:
        TIME_TO_FIRST_CHUNK.observe(max(0.0, time.time() - started_at))


def cancel_request(path: str, result: str) -> None:
    CANCEL_REQUESTS.labels(path=path, result=result).inc()


def cancel_requested(*, local: bool, flag_written: bool) -> None:
    """Called once per accepted cancel request on the instance that received it."""
    if local:
        cancel_request(LOCAL, "stopped")
    cancel_request(FLAG, "written" if flag_written else "failed")


def cancel_arrived(message_id: str, path: str) -> None:
    """Called when a cancel for a stream running here reached this instance by ``path``."""
    now = time.monotonic()
    if len(_pending_cancels) > 1000:
        for key, (_, since) in list(_pending_cancels.items()):
            if now - since > _PENDING_MAX_AGE:
                del _pending_cancels[key]
    _pending_cancels.setdefault(message_id, (path, now))


def stream_stopped(message_id: str) -> None:
    """Called when a stream's loop has ended; observes the cancel latency if it was cancelled."""
    pending = _pending_cancels.pop(message_id, None)
    if pending is not None:
        path, since = pending
        CANCEL_LATENCY.labels(path=path).observe(time.monotonic() - since)


def redis_error(operation: str) -> None:
    REDIS_ERRORS.labels(operation=operation).inc()


def exposition() -> tuple[bytes, str]:
    """The current metrics in the Prometheus text format, and its content type."""
    return _generate_latest(REGISTRY), CONTENT_TYPE_LATEST
