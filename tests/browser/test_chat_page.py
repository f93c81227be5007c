"""The chat page in headless Chromium against a real daphne process."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from streaming.backends import demo_chunks
from tests.browser.chat import UUID, open_chat, send, shown, stored, wait_for_chunks
from tests.browser.conftest import REPLY_WORDS, Server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def test_message_streams_in_chunk_by_chunk_as_text(context: BrowserContext, server: Server) -> None:
    page = open_chat(context, server.url)
    box = page.get_by_role("textbox", name="Message")
    box.fill("Show <b>me</b> streams")
    box.press("Shift+Enter")  # A new line, not a send.
    box.type("please")
    assert page.locator(".msg").count() == 0
    prompt = "Show <b>me</b> streams\nplease"
    box.press("Enter")
    reply = page.locator(".msg.assistant").first
    expect(reply).to_have_attribute("data-status", "streaming")
    wait_for_chunks(reply, 3)
    chunks, text = shown(reply)
    assert 3 <= chunks < REPLY_WORDS
    assert text == "".join(demo_chunks(prompt, REPLY_WORDS)[:chunks])
    wait_for_chunks(reply, chunks + 2)  # Still arriving, one by one.
    # The prompt is shown as typed: as text, never as HTML.
    user = page.locator(".msg.user").first
    expect(user.locator(".body")).to_have_text(prompt, use_inner_text=False)
    assert page.locator(".msg b").count() == 0
    # The conversation is in the URL and listed in the sidebar.
    assert re.search(r"\?c=" + UUID, page.url)
    sidebar = page.get_by_role("navigation", name="Conversations")
    expect(sidebar.get_by_role("link")).to_have_count(1)
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()


def test_stop_mid_reply_keeps_the_partial_text(context: BrowserContext, server: Server) -> None:
    page = open_chat(context, server.url)
    prompt = "stop me in the middle"
    reply = send(page, prompt)
    wait_for_chunks(reply, 5)
    page.get_by_role("button", name="Stop").click()
    expect(reply).to_have_attribute("data-status", "cancelled")
    chunks, text = shown(reply)
    assert 5 <= chunks < REPLY_WORDS
    assert text == "".join(demo_chunks(prompt, REPLY_WORDS)[:chunks])
    expect(reply.locator(".meta")).to_have_text("Stopped: the partial reply is kept.")
    message = stored(page, reply)
    assert (message["status"], message["text"]) == ("cancelled", text)
    # The page is ready for the next message.
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_stop_before_the_first_chunk(context: BrowserContext, slow_server: Server) -> None:
    page = open_chat(context, slow_server.url)
    reply = send(page, "think for a long time")
    expect(reply).to_have_attribute("data-status", "streaming")
    assert shown(reply) == (0, "")
    page.get_by_role("button", name="Stop").click()
    expect(reply).to_have_attribute("data-status", "cancelled")
    assert shown(reply)[1] == ""
    expect(reply.locator(".meta")).to_have_text("Stopped: before the reply began.")
    assert stored(page, reply)["status"] == "cancelled"


def test_reload_shows_the_stopped_reply_again(context: BrowserContext, server: Server) -> None:
    page = open_chat(context, server.url)
    prompt = "remember what I saw"
    reply = send(page, prompt)
    wait_for_chunks(reply, 4)
    page.keyboard.press("Escape")  # Esc stops too.
    expect(reply).to_have_attribute("data-status", "cancelled")
    message_id = reply.get_attribute("data-message-id")
    _, text = shown(reply)
    url = page.url

    page.reload()
    assert page.url == url
    again = page.locator(f'.msg.assistant[data-message-id="{message_id}"]')
    expect(again).to_have_attribute("data-status", "cancelled")
    expect(again.locator(".body")).to_have_text(text, use_inner_text=False)
    expect(page.locator(".msg.user .body")).to_have_text(prompt)

    # "New chat" leaves the conversation; the sidebar brings it back.
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    assert "?c=" not in page.url
    page.get_by_role("navigation", name="Conversations").get_by_role("link", name=prompt).click()
    expect(again).to_have_attribute("data-status", "cancelled")
    assert page.url == url


def test_lost_connection_shows_the_reply_interrupted_after_resync(
    context: BrowserContext, server: Server
) -> None:
    # Keep a handle on the page's sockets so the test can cut the connection.
    context.add_init_script(
        "const Native = window.WebSocket; window.__sockets = [];"
        "window.WebSocket = class extends Native {"
        "  constructor(...args) { super(...args); window.__sockets.push(this); } };"
    )
    page = open_chat(context, server.url)
    reply = send(page, "the network will fail")
    wait_for_chunks(reply, 3)
    page.evaluate("window.__sockets.at(-1).close()")
    # Reconnected, the page re-reads the reply from the server: interrupted, text as stored.
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(reply).to_have_attribute("data-status", "interrupted")
    expect(reply.locator(".meta")).to_have_text(
        "Interrupted: The connection was lost before the reply finished."
    )
    message = stored(page, reply)
    assert message["status"] == "interrupted"
    expect(reply.locator(".body")).to_have_text(message["text"], use_inner_text=False)
    assert page.evaluate("window.__sockets.length") == 2


def test_phone_width_layout_fits_the_screen(browser: Browser, server: Server) -> None:
    phone = browser.new_context(viewport={"width": 390, "height": 760})
    try:
        page = open_chat(phone, server.url)
        reply = send(page, "a long reply on a small screen " * 4)
        wait_for_chunks(reply, 30)
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        overflow, box_width = page.evaluate(
            "() => [document.documentElement.scrollWidth - innerWidth,"
            " document.getElementById('message').getBoundingClientRect().width]"
        )
        assert overflow <= 0
        assert box_width >= 250
    finally:
        phone.close()
