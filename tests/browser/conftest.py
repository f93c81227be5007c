"""Headless Chromium (Debian's ``/usr/bin/chromium``) driving the chat page and the admin of a
real daphne process, through Playwright's sync API.

The browser and the servers are package-scoped: starting them is most of the cost of a test.
Each test gets a fresh browser context (its own cookies, so its own chat session).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, sync_playwright

from tests.integration.cluster import ROOT, DaphneInstance, migrate, sqlite_url

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Demo replies long enough (400 words x 0.05 s = 20 s) to still be streaming when Stop is pressed.
REPLY_WORDS = 400
CHUNK_DELAY = 0.05


@dataclass(frozen=True)
class Admin:
    username: str
    password: str


def create_superuser(database_url: str, *, username: str = "admin") -> Admin:
    """A staff superuser in the given database, with a random password (never a default one)."""
    password = secrets.token_urlsafe(16)
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            username,
            "--email",
            f"{username}@example.com",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "DJANGO_SUPERUSER_PASSWORD": password,
        },
        check=True,
        capture_output=True,
    )
    return Admin(username=username, password=password)


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": "",
        "DATABASE_URL": database_url,
        "STREAM_CHUNK_DELAY": str(CHUNK_DELAY),
        "STREAM_FIRST_CHUNK_DELAY": str(CHUNK_DELAY),
        "DEMO_REPLY_WORDS": str(REPLY_WORDS),
        "STREAM_CANCEL_CHECK_SECONDS": "0.1",
        "STREAM_HEARTBEAT_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@dataclass
class Server:
    daphne: DaphneInstance
    admin: Admin

    @property
    def url(self) -> str:
        return self.daphne.http


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium'); .ci/run installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _serve(name: str, **extra: str) -> Iterator[Server]:
    database = sqlite_url()
    migrate(database)
    admin = create_superuser(database)
    daphne = DaphneInstance(name, server_env(database, **extra))
    try:
        daphne.start()
        yield Server(daphne=daphne, admin=admin)
    finally:
        daphne.stop()
    assert "Traceback" not in daphne.log(), daphne.log()


@pytest.fixture(scope="package")
def server(browser: Browser) -> Iterator[Server]:
    """The chat served by one daphne process in embedded mode (no Redis)."""
    yield from _serve("browser")


@pytest.fixture(scope="package")
def slow_server(browser: Browser) -> Iterator[Server]:
    """Like ``server``, but the model "thinks" for a minute before its first chunk."""
    yield from _serve("browser-slow", STREAM_FIRST_CHUNK_DELAY="60")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(15_000)
    yield context
    context.close()
