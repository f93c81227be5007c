"""Regenerate the README screenshots (run by hand, not by the test suite).

    .venv/bin/python docs/screenshots.py

Starts a private redis-server and two daphne instances ("web-1", "web-2") on a temporary SQLite
database, drives headless Chromium (Debian's /usr/bin/chromium) through a few conversations, kills
web-2 so its stream turns stale, and writes:

- docs/screenshot-chat.png   the chat page with a stopped reply and one mid-stream
- docs/screenshot-admin.png  the admin's Active streams page (streams on both instances)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.browser.chat import open_chat, send, wait_for_chunks  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, create_superuser  # noqa: E402
from tests.integration.cluster import DaphneInstance, migrate, sqlite_url  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

DOCS = ROOT / "docs"


def main() -> None:
    redis = RedisServer().start()
    database = sqlite_url()
    migrate(database)
    admin = create_superuser(database)
    env = {
        "REDIS_URL": redis.url,
        "DATABASE_URL": database,
        "STREAM_CHUNK_DELAY": "0.12",
        "DEMO_REPLY_WORDS": "500",
        "STREAM_HEARTBEAT_SECONDS": "0.5",
        "STREAM_STALE_AFTER_SECONDS": "2",
        "LOG_LEVEL": "WARNING",
    }
    web1, web2 = DaphneInstance("web-1", env), DaphneInstance("web-2", env)
    try:
        web1.start()
        web2.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            size = {"width": 1200, "height": 760}

            # Two other users streaming, one on each instance.
            for url, prompt in (
                (web1.http, "Summarise the release notes"),
                (web2.http, "Draft a reply to the support ticket"),
            ):
                other = open_chat(browser.new_context(viewport=size), url)
                wait_for_chunks(send(other, prompt), 2)

            # The user of the screenshot: an older conversation, a stopped reply, one streaming.
            chat = open_chat(browser.new_context(viewport=size), web1.http)
            wait_for_chunks(send(chat, "What is a cancel flag?"), 2)
            chat.get_by_role("button", name="Stop").click()
            chat.get_by_role("button", name="New chat").click()
            stopped = send(chat, "How does Stop work when I run several instances?")
            wait_for_chunks(stopped, 24)
            chat.keyboard.press("Escape")
            chat.locator('.msg.assistant[data-status="cancelled"]').last.wait_for()
            streaming = send(chat, "And what happens if Redis goes down mid-reply?")
            wait_for_chunks(streaming, 30)
            chat.screenshot(path=str(DOCS / "screenshot-chat.png"))

            web2.kill()  # Its stream stops heartbeating: the admin marks it stale.
            time.sleep(3)
            page: Page = browser.new_context(viewport={"width": 1280, "height": 560}).new_page()
            page.goto(f"{web1.http}/admin/")
            page.get_by_label("Username").fill(admin.username)
            page.get_by_label("Password").fill(admin.password)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name="Active streams").click()
            page.locator("tr.stream-row").first.wait_for()
            page.screenshot(path=str(DOCS / "screenshot-admin.png"), full_page=True)
            browser.close()
    finally:
        web1.stop()
        web2.stop()
        redis.stop()
    print("wrote", DOCS / "screenshot-chat.png", DOCS / "screenshot-admin.png")


if __name__ == "__main__":
    main()
