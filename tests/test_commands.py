"""Operator commands: ``list_streams`` and ``cancel_stream``, against running streams."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from tests.conftest import eventually

pytestmark = [pytest.mark.django_db(transaction=True)]


def call(*args: str) -> str:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out)
    finally:
        connections.close_all()
    return out.getvalue()


async def run(*args: str) -> str:
    """Run a command in a thread of its own, with its own event loop, as ``manage.py`` would."""
    return await asyncio.to_thread(call, *args)


@pytest.fixture
def long_replies(settings):
    settings.DEMO_REPLY_WORDS = 500


async def test_list_streams_shows_running_streams(connect, long_replies):
    assert (await run("list_streams")).strip() == "No active streams."
    client = await connect("owner-secret-key")
    started = await client.start("list me")
    await client.receive()

    async def listed() -> bool:
        return "No active streams." not in await run("list_streams")

    await eventually(listed)
    table = await run("list_streams")
    [header, row] = table.strip().splitlines()
    assert header.split()[:3] == ["MESSAGE", "INSTANCE", "OWNER"]
    assert row.startswith(started["message_id"])
    assert "session:owner-…" in row and "owner-secret-key" not in row
    [line] = (await run("list_streams", "--json")).strip().splitlines()
    entry = json.loads(line)
    assert entry["message_id"] == started["message_id"]
    assert entry["conversation_id"] == started["conversation_id"]
    assert entry["stale"] is False


async def test_cancel_stream_stops_a_running_reply(connect, long_replies):
    client = await connect()
    started = await client.start("stop me, operator")
    await client.receive()
    output = await run("cancel_stream", started["message_id"])
    assert output.strip() == f"Cancel of {started['message_id']} delivered."
    frames = await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"

    async def listing_empty() -> bool:  # The registry drops ended streams in its next batch.
        return (await run("list_streams")).strip() == "No active streams."

    await eventually(listing_empty)


@pytest.mark.parametrize(
    ("argument", "error"),
    [("nope", "is not a message id"), (str(uuid.uuid4()), "No such message.")],
)
async def test_cancel_stream_rejects_bad_or_unknown_ids(argument, error):
    with pytest.raises(CommandError, match=error):
        await run("cancel_stream", argument)


async def test_commands_with_redis(connect, long_replies, settings, redis_server, close_store):
    settings.REDIS_URL = redis_server.url
    settings.STREAM_REDIS_PREFIX = f"cmd-{uuid.uuid4().hex[:8]}"
    client = await connect()
    started = await client.start("through redis")
    await client.receive()
    assert started["message_id"] in await run("list_streams")
    await run("cancel_stream", started["message_id"])
    frames = await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"
