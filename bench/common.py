"""Shared plumbing of the benchmarks: a private cluster of real processes, and stream clients.

Every benchmark runs a private ``redis-server``, one or two ``daphne`` processes and a fresh
PostgreSQL database (SQLite if PostgreSQL is not reachable); the benchmark process itself is the
client, so clients and servers never share an interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.integration.cluster import (  # noqa: E402
    ChatSession,
    ChatSocket,
    DaphneInstance,
    migrate,
    sqlite_url,
)
from tests.redis_server import RedisServer  # noqa: E402

#: Mode name -> environment of the daphne instances.
MODES = {
    "batched": {"STREAM_CANCEL_MODE": "batched"},
    "poll": {"STREAM_CANCEL_MODE": "poll"},
}

# Limits are a production safety net; a benchmark deliberately exceeds what one user may do.
UNLIMITED = {
    "STREAM_MAX_STREAMS_PER_SESSION": "100000",
    "STREAM_MAX_CONNECTIONS_PER_SESSION": "100000",
    "STREAM_MESSAGES_PER_MINUTE": "1000000",
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else float("nan"),
        "max_ms": round(max(values) * 1000, 1) if values else float("nan"),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def postgres_url() -> str | None:
    """A fresh PostgreSQL database on the local server, or None if there is none."""
    name = f"chatbench_{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"CREATE DATABASE {name}"],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def drop_postgres(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"DROP DATABASE IF EXISTS {name}"],
        capture_output=True,
        timeout=30,
    )


@dataclass
class Cluster:
    redis: RedisServer
    instances: list[DaphneInstance]
    database: str
    sessions: list[ChatSession] = field(default_factory=list)

    def redis_commands(self) -> int:
        client = redis.Redis.from_url(self.redis.url)
        try:
            return int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()


@contextlib.contextmanager
def cluster(instances: int, env: dict[str, str]) -> Iterator[Cluster]:
    server = RedisServer().start()
    pg = postgres_url()
    database = pg or sqlite_url()
    common = {
        "REDIS_URL": server.url,
        "DATABASE_URL": database,
        "DATABASE_CONN_MAX_AGE": "600",
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        **UNLIMITED,
        **env,
        # BENCH_SET_<NAME>=value sets <NAME> on the servers, e.g. to try another setting.
        **{k[len("BENCH_SET_") :]: v for k, v in os.environ.items() if k.startswith("BENCH_SET_")},
    }
    migrate(database, common)
    started = [DaphneInstance(f"bench-{i}", common) for i in range(instances)]
    try:
        for instance in started:
            instance.start(timeout=60)
        yield Cluster(server, started, database)
    finally:
        for instance in started:
            instance.stop()
        server.stop()
        if pg:
            drop_postgres(pg)


class Stream:
    """One chat socket running one reply, recording when each frame arrived."""

    def __init__(self, socket: ChatSocket) -> None:
        self.socket = socket
        self.started: dict[str, Any] = {}
        self.started_at = 0.0
        self.chunk_times: list[float] = []
        self.finished: dict[str, Any] | None = None
        self.finished_at = 0.0
        self.first_chunk = asyncio.Event()
        self.done = asyncio.Event()
        self.reader: asyncio.Task | None = None

    @classmethod
    async def open(
        cls, session: ChatSession, instance: DaphneInstance, text: str, path: str = "/ws/chat/"
    ) -> Stream:
        stream = cls(await session.socket(instance, path))
        stream.started = await stream.socket.start(text)
        stream.started_at = time.monotonic()
        stream.reader = asyncio.create_task(stream._read())
        return stream

    @property
    def message_id(self) -> str:
        return self.started["message_id"]

    async def _read(self) -> None:
        try:
            while True:
                frame = json.loads(await self.socket.connection.recv())
                now = time.monotonic()
                if frame["type"] == "stream.chunk":
                    self.chunk_times.append(now)
                    self.first_chunk.set()
                elif frame["type"] == "stream.finished":
                    self.finished = frame
                    self.finished_at = now
                    self.done.set()
                    return
        except Exception:
            self.done.set()

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        with contextlib.suppress(Exception):
            await self.socket.close()


async def open_streams(
    owners: list[ChatSession],
    instances: list[DaphneInstance],
    count: int,
    label: str,
    *,
    path: str = "/ws/chat/",
    wave: int | None = None,
) -> list[Stream]:
    """Open ``count`` streams round robin over ``owners`` and ``instances``, ``wave`` at a time
    (None: all at once), and return once every one has sent its first chunk."""
    running: list[Stream] = []
    step = wave or count
    for start in range(0, count, step):
        running += await asyncio.gather(
            *(
                Stream.open(
                    owners[i % len(owners)], instances[i % len(instances)], f"{label} {i}", path
                )
                for i in range(start, min(count, start + step))
            )
        )
    await asyncio.gather(*(s.first_chunk.wait() for s in running))
    return running


async def sessions(instance: DaphneInstance, count: int) -> list[ChatSession]:
    return list(await asyncio.gather(*(ChatSession().login(instance) for _ in range(count))))


async def cancel_via(
    session: ChatSession, instance: DaphneInstance, message_ids: list[str]
) -> list[dict]:
    """Send cancels on one socket to ``instance``; returns the cancel.accepted frames."""
    socket = await session.socket(instance)
    try:
        for message_id in message_ids:
            await socket.send({"type": "stream.cancel", "message_id": message_id})
        return [await socket.receive(timeout=30) for _ in message_ids]
    finally:
        await socket.close()


def parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mode", choices=sorted(MODES), default="batched")
    return parser


def emit(result: dict[str, Any]) -> None:
    result.setdefault("machine", machine())
    print(json.dumps(result), flush=True)
