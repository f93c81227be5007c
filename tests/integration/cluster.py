"""Real processes for integration tests and benchmarks: daphne instances and a chat client.

``DaphneInstance`` runs ``daphne chatproject.asgi:application`` on a free port with its own
``INSTANCE_ID`` and the given environment (``REDIS_URL``, ``DATABASE_URL``...). ``ChatSession``
gets a session cookie with ``GET /`` like a browser, then opens chat sockets with it, on any
instance: a session is shared by all instances through the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.frames import FrameClient
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def migrate(database_url: str, env: Mapping[str, str] | None = None) -> None:
    """Create the schema of a fresh database (run once before starting instances)."""
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, **(env or {}), "DATABASE_URL": database_url},
        check=True,
    )


def sqlite_url() -> str:
    """A fresh SQLite file shared by the instances of one test."""
    directory = tempfile.mkdtemp(prefix="chat-db-")
    return f"sqlite:///{directory}/db.sqlite3"


class DaphneInstance:
    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        port: int | None = None,
        daphne_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port = port or free_port()
        #: Extra daphne flags, e.g. ``("--ping-interval", "1", "--ping-timeout", "1")``.
        self.daphne_args = list(daphne_args)
        self.env = {
            **os.environ,
            "DEBUG": "1",
            "INSTANCE_ID": name,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.log_path = Path(tempfile.mkdtemp(prefix=f"daphne-{name}-")) / "daphne.log"
        self.process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def start(self, timeout: float = 30) -> DaphneInstance:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                *self.daphne_args,
                "chatproject.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne {self.name} exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.http}/healthz/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daphne {self.name} did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if hasattr(self, "_log"):
            self._log.close()


class ChatSocket(FrameClient):
    until_timeout = 20

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def receive(self, timeout: float = 10) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.connection.recv(), timeout))

    async def start(self, text: str, **extra: Any) -> dict[str, Any]:
        """Start a reply; frames of earlier replies still in flight are skipped."""
        await self.send({"type": "chat.message", "text": text, **extra})
        while True:
            frame = await self.receive()
            if frame["type"] == "stream.started":
                return frame
            if frame["type"] == "error":
                raise AssertionError(frame)

    async def close(self) -> None:
        await self.connection.close()


class ChatSession:
    """A browser-like session: cookies from ``GET /``, then sockets and API calls anywhere."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    async def login(self, instance: DaphneInstance) -> ChatSession:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{instance.http}/")
            response.raise_for_status()
            self.cookies = dict(response.cookies)
        return self

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    async def socket(self, instance: DaphneInstance, path: str = "/ws/chat/") -> ChatSocket:
        connection = await websockets.connect(
            f"ws://127.0.0.1:{instance.port}{path}",
            additional_headers={"Cookie": self.cookie_header},
            origin=f"http://127.0.0.1:{instance.port}",
            max_size=2**22,
        )
        return ChatSocket(connection)

    async def get_json(self, instance: DaphneInstance, path: str) -> Any:
        async with httpx.AsyncClient(cookies=self.cookies) as client:
            response = await client.get(f"{instance.http}{path}")
            return response.status_code, response.json()

    async def post_json(self, instance: DaphneInstance, path: str) -> Any:
        async with httpx.AsyncClient(cookies=self.cookies) as client:
            response = await client.post(
                f"{instance.http}{path}",
                headers={
                    "X-CSRFToken": self.cookies.get("csrftoken", ""),
                    "Referer": f"{instance.http}/",
                    "Origin": instance.http,
                },
            )
            return response.status_code, response.json()
