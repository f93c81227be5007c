"""The OpenAI-compatible backend against a fake model server speaking real HTTP and SSE."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from streaming.backends import DemoBackend, Turn, get_backend
from streaming.models import Message
from streaming.openai_backend import OpenAIBackend
from tests.fake_openai import FakeOpenAI
from tests.redis_server import free_port

OPENAI = "streaming.openai_backend.OpenAIBackend"
TIMED_OUT = "The model did not answer in time. Please try again."


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def use_model(settings: Any, fake_openai: FakeOpenAI) -> Any:
    """Point the service at the fake server with the given model (which picks its behaviour)."""

    def use(model: str, **options: Any) -> None:
        settings.STREAM_BACKEND = OPENAI
        settings.STREAM_BACKEND_OPTIONS = {
            "base_url": fake_openai.base_url,
            "api_key": "test-key",
            "model": model,
            "timeout": 5.0,
            **options,
        }

    return use


def test_messages_carry_system_prompt_and_recent_history():
    backend = OpenAIBackend(model="m", system_prompt="Be brief.", max_history=2)
    history = [
        Turn("user", "one"),
        Turn("assistant", "1"),
        Turn("user", "two"),
        Turn("assistant", ""),
    ]
    assert backend.messages(prompt="three", history=history) == [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "two"},
        {"role": "user", "content": "three"},
    ]
    assert OpenAIBackend(model="m", max_history=0).messages(prompt="p", history=history) == [
        {"role": "user", "content": "p"}
    ]


def test_get_backend_passes_settings_as_keywords(settings):
    settings.STREAM_BACKEND = OPENAI
    settings.STREAM_BACKEND_OPTIONS = {"model": "gpt-test", "base_url": "http://x/v1", "timeout": 3}
    backend = get_backend()
    assert isinstance(backend, OpenAIBackend)
    assert (backend.model, backend.base_url, backend.timeout) == ("gpt-test", "http://x/v1", 3)
    settings.STREAM_BACKEND = "streaming.backends.DemoBackend"
    settings.STREAM_BACKEND_OPTIONS = {}
    settings.DEMO_REPLY_WORDS = 7
    demo = get_backend()
    assert isinstance(demo, DemoBackend) and demo.words == 7


@pytest.mark.django_db(transaction=True)
async def test_chunks_flow_to_client_and_history_is_sent(connect, use_model, fake_openai):
    use_model("fake-chat")
    client = await connect()
    started = await client.start("hi")
    frames = await client.receive_until("stream.finished")
    assert [f["text"] for f in frames if f["type"] == "stream.chunk"] == fake_openai.chunks
    assert frames[-1]["status"] == "completed" and frames[-1]["chunks"] == 4
    stored = await Message.objects.aget(pk=started["message_id"])
    assert (stored.status, stored.text) == ("completed", "Hello, world!")
    first = fake_openai.connections[-1].request
    assert first["model"] == "fake-chat" and first["stream"] is True
    assert first["messages"] == [{"role": "user", "content": "hi"}]

    await client.start("again", conversation_id=started["conversation_id"])
    await client.receive_until("stream.finished")
    assert fake_openai.connections[-1].request["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello, world!"},
        {"role": "user", "content": "again"},
    ]


@pytest.mark.django_db(transaction=True)
async def test_cancel_closes_the_model_connection_at_once(connect, use_model, fake_openai):
    fake_openai.delay = 0.02
    use_model("fake-endless")
    client = await connect()
    started = await client.start("go on forever")
    seen = [await client.receive() for _ in range(3)]
    connection = fake_openai.connections[-1]
    assert connection.client_closed_at is None
    cancelled_at = time.monotonic()
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    closed_at = await asyncio.to_thread(fake_openai.wait_closed, connection)
    # Behaviour check with a generous bound: the model hears about Stop within 200 ms.
    assert closed_at - cancelled_at < 0.2
    frames = seen + await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"
    stored = await Message.objects.aget(pk=started["message_id"])
    assert stored.text == "".join(f["text"] for f in frames if f["type"] == "stream.chunk")
    written = connection.chunks_written
    await asyncio.sleep(0.1)
    assert connection.chunks_written == written  # The server stopped generating.


@pytest.mark.django_db(transaction=True)
async def test_disconnect_closes_the_model_connection(connect, use_model, fake_openai):
    fake_openai.delay = 0.02
    use_model("fake-endless")
    client = await connect()
    started = await client.start("leaving")
    await client.receive()
    connection = fake_openai.connections[-1]
    await client.communicator.disconnect()
    await asyncio.to_thread(fake_openai.wait_closed, connection, 2)
    stored = await Message.objects.aget(pk=started["message_id"])
    assert stored.status == "interrupted"


@pytest.mark.django_db(transaction=True)
async def test_cancel_before_first_chunk_closes_the_model_connection(
    connect, use_model, fake_openai
):
    use_model("fake-silent")
    client = await connect()
    started = await client.start("think")
    deadline = time.monotonic() + 2
    while not fake_openai.connections or fake_openai.connections[-1].request is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    await asyncio.to_thread(fake_openai.wait_closed, fake_openai.connections[-1], 2)
    frames = await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled" and frames[-1]["chunks"] == 0


@pytest.mark.parametrize(
    ("model", "options", "message", "text"),
    [
        ("fake-500", {}, "The model server failed (HTTP 500). Please try again later.", ""),
        ("fake-malformed", {}, "The model server sent a reply that could not be read.", "partial"),
        ("fake-silent", {"timeout": 0.3}, TIMED_OUT, ""),
    ],
)
@pytest.mark.django_db(transaction=True)
async def test_upstream_errors_end_the_reply_failed_with_a_readable_message(
    connect, use_model, caplog, settings, model, options, message, text
):
    use_model(model, **options)
    # The configured console handler's filter (settings.LOGGING) labels the records.
    logging.getLogger("streaming").addHandler(caplog.handler)
    try:
        client = await connect()
        started = await client.start("please fail")
        frames = await client.receive_until("stream.finished")
    finally:
        logging.getLogger("streaming").removeHandler(caplog.handler)
    assert frames[-1] == {
        "type": "stream.finished",
        "message_id": started["message_id"],
        "status": "failed",
        "chunks": len(text and [text]),
        "error": message,
    }
    stored = await Message.objects.aget(pk=started["message_id"])
    assert (stored.status, stored.error, stored.text) == ("failed", message, text)
    upstream = [r for r in caplog.records if r.name == "streaming.openai_backend"]
    assert upstream and all(r.stream_id == started["message_id"] for r in upstream)
    assert all(r.instance_id == settings.INSTANCE_ID for r in upstream)


@pytest.mark.django_db(transaction=True)
async def test_unreachable_model_server(connect, settings):
    settings.STREAM_BACKEND = OPENAI
    settings.STREAM_BACKEND_OPTIONS = {
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "model": "any",
        "connect_timeout": 1.0,
    }
    client = await connect()
    await client.start("anyone there?")
    frames = await client.receive_until("stream.finished")
    assert frames[-1]["status"] == "failed"
    assert frames[-1]["error"] == "The model server could not be reached. Please try again later."


@pytest.mark.parametrize(
    ("backend", "options"),
    [("streaming.nope.Backend", {}), (OPENAI, {"model": ""}), (OPENAI, {"modle": "typo"})],
)
def test_a_backend_that_cannot_be_built_is_a_system_check_error(settings, backend, options):
    from streaming.checks import check_stream_backend

    settings.STREAM_BACKEND = backend
    settings.STREAM_BACKEND_OPTIONS = options
    [error] = check_stream_backend()
    assert error.id == "streaming.E004"
    settings.STREAM_BACKEND = "streaming.backends.DemoBackend"
    settings.STREAM_BACKEND_OPTIONS = {}
    assert check_stream_backend() == []
