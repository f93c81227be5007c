"""Driving the chat page: open it, send a message, read a reply."""

from __future__ import annotations

import re
from urllib.parse import urljoin

from playwright.sync_api import BrowserContext, Locator, Page, expect

UUID = r"[0-9a-f-]{36}"


def open_chat(context: BrowserContext, url: str) -> Page:
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    return page


def send(page: Page, text: str) -> Locator:
    """Type ``text`` and press Enter; returns the reply element once the server announced it."""
    before = page.locator(".msg.assistant").count()
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("textbox", name="Message").press("Enter")
    reply = page.locator(".msg.assistant").nth(before)
    expect(reply).to_have_attribute("data-message-id", re.compile(UUID))
    return reply


def shown(reply: Locator) -> tuple[int, str]:
    """Chunks received and text shown, read in one go (the reply may still be growing)."""
    chunks, text = reply.evaluate(
        "el => [Number(el.dataset.chunks || 0), el.querySelector('.body').textContent]"
    )
    return chunks, text


def wait_for_chunks(reply: Locator, count: int) -> None:
    reply.page.wait_for_function(
        "([el, n]) => Number(el.dataset.chunks || 0) >= n", arg=[reply.element_handle(), count]
    )


def stored(page: Page, reply: Locator) -> dict:
    conversation = re.search(r"[?&]c=(" + UUID + ")", page.url)
    assert conversation, page.url
    response = page.request.get(
        urljoin(page.url, f"/api/conversations/{conversation.group(1)}/messages/")
    )
    assert response.ok
    message_id = reply.get_attribute("data-message-id")
    [message] = [m for m in response.json()["messages"] if m["message_id"] == message_id]
    return message
