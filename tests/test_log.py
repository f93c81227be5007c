"""Log lines about a stream carry its id and the instance id, in plain and JSON format."""

from __future__ import annotations

import asyncio
import json
import logging

from streaming.log import ContextFilter, JsonFormatter, bind_stream


def make_record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("streaming.test", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


async def test_stream_id_follows_the_task_that_bound_it():
    context_filter = ContextFilter(instance_id="instance-a")
    seen: dict[str, str] = {}

    async def stream_task(message_id: str) -> None:
        bind_stream(message_id)
        await asyncio.sleep(0)
        record = make_record("inside")
        context_filter.filter(record)
        seen[message_id] = record.stream_id

    await asyncio.gather(stream_task("m-1"), stream_task("m-2"))
    outside = make_record("outside")
    context_filter.filter(outside)
    assert seen == {"m-1": "m-1", "m-2": "m-2"}
    assert (outside.stream_id, outside.instance_id) == ("-", "instance-a")


def test_explicit_extra_wins_and_json_lines_carry_both_ids():
    record = make_record("Cancel of %s", stream_id="m-9")
    record.args = ("m-9",)
    ContextFilter(instance_id="instance-b").filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["stream_id"] == "m-9" and line["instance_id"] == "instance-b"
    assert line["message"] == "Cancel of m-9" and line["level"] == "INFO"
