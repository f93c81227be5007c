"""Property: whatever a client sends, the consumer answers every frame with a contract frame.

One socket serves every example (a communicator per example would cost most of the time budget);
at the end, every stream that started has finished and nothing is left in the registry.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streaming import instance
from streaming.exceptions import ERROR_CODES
from streaming.models import Message
from streaming.runtime import get_store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

ANSWERS = {"pong", "error", "stream.started", "cancel.accepted"}
UNSOLICITED = {"stream.chunk", "stream.finished"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ids = st.one_of(st.uuids().map(str), st.text(max_size=40), st.integers(), st.none())
frames = st.one_of(
    st.text(max_size=60),  # Mostly not JSON at all.
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["chat.message", "stream.cancel", "ping", "pong", "", "x" * 200])},
        optional={
            "text": st.one_of(st.text(max_size=30), st.integers(), st.none()),
            "conversation_id": ids,
            "message_id": ids,
        },
    ).map(json.dumps),
    st.just(json.dumps({"type": "ping", "pad": "x" * 70_000})),
    st.just("[" * 5000 + "]" * 5000),  # Deep nesting.
    st.binary(max_size=40),
)


def is_contract_frame(frame: dict[str, Any]) -> bool:
    kind = frame.get("type")
    if kind == "error":
        return frame.get("code") in ERROR_CODES and isinstance(frame.get("message"), str)
    if kind in ("stream.started", "stream.chunk", "stream.finished", "cancel.accepted"):
        return isinstance(frame.get("message_id"), str)
    return kind == "pong"


async def test_random_frames_are_all_answered_by_contract_frames(connect, settings: Any):
    settings.DEMO_REPLY_WORDS = 3
    settings.STREAM_CHUNK_DELAY = 0.001
    settings.STREAM_FIRST_CHUNK_DELAY = 0.001
    client = await connect("fuzzer")
    started: set[str] = set()
    finished: set[str] = set()
    seen = {"frames": 0}

    async def answer_to(raw: str | bytes) -> dict[str, Any]:
        # send_input, not send_to: the test helper refuses empty frames, a real client does not.
        key = "bytes" if isinstance(raw, bytes) else "text"
        await client.communicator.send_input({"type": "websocket.receive", key: raw})
        while True:
            frame = await client.receive()
            assert is_contract_frame(frame), frame
            if frame["type"] == "stream.started":
                started.add(frame["message_id"])
            if frame["type"] == "stream.finished":
                finished.add(frame["message_id"])
            if frame["type"] in ANSWERS:
                return frame

    async def example(batch: list[str | bytes]) -> None:
        for raw in batch:
            await answer_to(raw)
            seen["frames"] += 1
        assert await answer_to('{"type": "ping"}') == {"type": "pong"}

    loop = asyncio.get_running_loop()

    # Hypothesis drives examples synchronously, so it runs in a worker thread and hands each
    # example to this test's event loop, which owns the socket.
    @hypothesis_settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(frames, min_size=5, max_size=40))
    def property_holds(batch: list[str | bytes]) -> None:
        asyncio.run_coroutine_threadsafe(example(batch), loop).result(30)

    await asyncio.to_thread(property_holds)
    assert seen["frames"] >= 2000

    # Some chat messages did start streams (the property is not vacuous), and all of them end.
    await answer_to(json.dumps({"type": "chat.message", "text": "last one"}))
    assert started
    while finished < started:
        frame = await client.receive()
        assert frame["type"] in UNSOLICITED, frame
        if frame["type"] == "stream.finished":
            finished.add(frame["message_id"])
    assert await Message.objects.filter(status="streaming").acount() == 0
    # Registry writes are batched (registry_flush_seconds): wait for the last one.
    async with asyncio.timeout(5):
        while True:
            if not await get_store().list_active():
                break
            await asyncio.sleep(0.05)
    assert all(not streams.streams for streams in instance.all_instance_streams())
