"""An operator cancels a user's running stream from the admin; the user's page shows it stopped."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from tests.browser.chat import open_chat, send, shown, wait_for_chunks
from tests.browser.conftest import REPLY_WORDS, Server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def test_admin_sees_and_cancels_a_running_stream(
    browser: Browser, context: BrowserContext, server: Server
) -> None:
    chat = open_chat(context, server.url)
    reply = send(chat, "an operator will stop this")
    wait_for_chunks(reply, 3)
    message_id = reply.get_attribute("data-message-id")

    operator = browser.new_context(viewport={"width": 1280, "height": 720})
    operator.set_default_timeout(15_000)
    try:
        admin = operator.new_page()
        admin.goto(f"{server.url}/admin/")
        admin.get_by_label("Username").fill(server.admin.username)
        admin.get_by_label("Password").fill(server.admin.password)
        admin.get_by_role("button", name="Log in").click()
        admin.get_by_role("link", name="Active streams").click()
        expect(admin.get_by_role("heading", name="Active streams")).to_be_visible()

        row = admin.locator(f'tr[data-message-id="{message_id}"]')
        expect(row).to_have_attribute("data-stale", "false")
        expect(row).to_contain_text("session ")
        expect(row).to_contain_text("an operator will stop this")
        expect(row).to_contain_text("live")

        row.get_by_role("checkbox").check()
        admin.get_by_label("Action:").select_option(label="Cancel selected streams")
        admin.get_by_role("button", name="Go").click()
        expect(admin.locator(".messagelist")).to_contain_text("1 cancel delivered.")
        for _ in range(50):  # The stream may still be saving: reload until it is gone.
            if admin.locator(f'tr[data-message-id="{message_id}"]').count() == 0:
                break
            admin.wait_for_timeout(100)
            admin.reload()
        expect(admin.locator(f'tr[data-message-id="{message_id}"]')).to_have_count(0)
    finally:
        operator.close()

    expect(reply).to_have_attribute("data-status", "cancelled")
    chunks, text = shown(reply)
    assert 3 <= chunks < REPLY_WORDS
    assert text
