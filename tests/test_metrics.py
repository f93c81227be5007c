"""``GET /metrics`` after real streams. The registry is process-wide, so tests compare deltas."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_server import free_port

pytestmark = [pytest.mark.django_db(transaction=True)]

Samples = dict[tuple[str, frozenset], float]


async def scrape(async_client: Any) -> Samples:
    response = await async_client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def delta(before: Samples, after: Samples) -> Counter:
    """Changed samples as ``{"name{label=value,...}": change}`` (chat_ metrics, no buckets)."""
    changes: Counter = Counter()
    for key, value in after.items():
        name, labels = key
        change = value - before.get(key, 0.0)
        if name.startswith("chat_") and not name.endswith("_created") and change:
            label_text = ",".join(f"{k}={v}" for k, v in sorted(labels) if k != "le")
            if "le" not in dict(labels):
                changes[f"{name}{{{label_text}}}"] = change
    return changes


async def test_completed_and_cancelled_streams_are_counted(connect, async_client, settings):
    before = await scrape(async_client)
    client = await connect()
    await client.start("complete me")
    frames = await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "completed"
    settings.DEMO_REPLY_WORDS = 500
    client = await connect()
    started = await client.start("cancel me")
    seen = [await client.receive() for _ in range(3)]
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    frames = seen + await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"
    cancelled_chunks = frames[-1]["chunks"]

    changes = delta(before, await scrape(async_client))
    assert changes == {
        "chat_streams_finished_total{status=completed}": 1,
        "chat_streams_finished_total{status=cancelled}": 1,
        "chat_chunks_sent_total{}": 20 + cancelled_chunks,
        "chat_time_to_first_chunk_seconds_count{}": 2,
        "chat_time_to_first_chunk_seconds_sum{}": changes["chat_time_to_first_chunk_seconds_sum{}"],
        "chat_cancel_requests_total{path=local,result=stopped}": 1,
        "chat_cancel_latency_seconds_count{path=local}": 1,
        "chat_cancel_latency_seconds_sum{path=local}": changes[
            "chat_cancel_latency_seconds_sum{path=local}"
        ],
    }
    assert 0 < changes["chat_cancel_latency_seconds_sum{path=local}"] < 5
    # Streams active went up and back down.
    assert "chat_streams_active{}" not in changes


async def test_flag_path_latency_and_active_gauge(connect, async_client, settings):
    from streaming.runtime import get_store

    settings.DEMO_REPLY_WORDS = 500
    before = await scrape(async_client)
    client = await connect()
    started = await client.start("stop me from elsewhere")
    await client.receive()
    during = await scrape(async_client)
    assert delta(before, during)["chat_streams_active{}"] == 1
    await get_store().set_cancelled(started["message_id"])  # As another instance would.
    frames = await client.receive_until("stream.finished", timeout=3)
    assert frames[-1]["status"] == "cancelled"
    changes = delta(before, await scrape(async_client))
    assert changes["chat_cancel_latency_seconds_count{path=flag}"] == 1
    assert "chat_cancel_latency_seconds_count{path=local}" not in changes
    assert "chat_streams_active{}" not in changes


async def test_redis_errors_are_counted_by_operation(connect, async_client, settings, close_store):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # Nobody listens there.
    settings.STREAM_REDIS_TIMEOUT = 0.2
    settings.DEMO_REPLY_WORDS = 500
    before = await scrape(async_client)
    client = await connect()
    started = await client.start("no redis today")
    for _ in range(20):  # Long enough for a heartbeat and a flag check to fail.
        await client.receive()
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    frames = await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"  # The local path needs no Redis.
    changes = delta(before, await scrape(async_client))
    # Registry writes and flag checks failed and were counted; the stream never noticed.
    assert changes["chat_redis_errors_total{operation=heartbeat}"] >= 1
    assert changes["chat_redis_errors_total{operation=check}"] >= 1
    assert changes["chat_cancel_requests_total{path=local,result=stopped}"] == 1
    # A same-instance Stop never touches Redis.
    assert "chat_cancel_requests_total{path=flag,result=failed}" not in changes
