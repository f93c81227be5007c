"""Token sources: where a reply's chunks come from.

A backend is a class whose ``stream()`` is an async generator of text chunks. The streaming loop
closes the generator (``aclose()``) the moment a reply is stopped, so a backend that talks to a
model must release its upstream request in ``finally``/context managers: that is how Stop stops
the model and not just the screen.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier message of the conversation, sent to the model as context."""

    role: str
    text: str


class Backend(Protocol):
    def stream(self, *, prompt: str, history: Sequence[Turn]) -> AsyncIterator[str]:
        """Yield the reply to ``prompt`` chunk by chunk."""
        ...


class BackendError(Exception):
    """The model failed; ``str(exc)`` is shown to the user, so keep it readable."""


_VOCABULARY = (
    "the a stream of tokens flows from model to browser while redis keeps watch over every "
    "instance and cancel flag so stop means stop across the whole cluster quickly safely "
    "channels daphne django async chunk reply partial text saved exactly as seen by user"
).split()


def demo_reply_words(prompt: str, words: int) -> list[str]:
    """The demo reply to ``prompt``: deterministic, so tests can predict every chunk."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    return [rng.choice(_VOCABULARY) for _ in range(words)]


def demo_chunks(prompt: str, words: int) -> list[str]:
    """The demo reply as the client receives it: a space before every word but the first."""
    return [w if i == 0 else f" {w}" for i, w in enumerate(demo_reply_words(prompt, words))]


class DemoBackend:
    """Echo-free demo model: ``words`` words derived from the prompt, ``delay`` seconds apart."""

    def __init__(
        self, *, words: int = 500, delay: float = 0.1, first_delay: float | None = None
    ) -> None:
        self.words = words
        self.delay = delay
        self.first_delay = delay if first_delay is None else first_delay

    async def stream(self, *, prompt: str, history: Sequence[Turn]) -> AsyncIterator[str]:
        for index, chunk in enumerate(demo_chunks(prompt, self.words)):
            await asyncio.sleep(self.first_delay if index == 0 else self.delay)
            yield chunk


def backend_options(backend_class: type) -> dict[str, Any]:
    """Constructor keywords for ``backend_class`` from settings (``STREAM_BACKEND_OPTIONS``).

    The demo's come from the ``DEMO_REPLY_WORDS``/``STREAM_*_DELAY`` settings, read per stream so
    that a test (or ``override_settings``) changing them takes effect on the next reply.
    """
    options: dict[str, Any] = {}
    if issubclass(backend_class, DemoBackend):
        options = {
            "words": settings.DEMO_REPLY_WORDS,
            "delay": settings.STREAM_CHUNK_DELAY,
            "first_delay": settings.STREAM_FIRST_CHUNK_DELAY,
        }
    return {**options, **settings.STREAM_BACKEND_OPTIONS}


def get_backend() -> Backend:
    """Instantiate the configured ``STREAM_BACKEND`` with its options; called once per stream."""
    backend_class = import_string(settings.STREAM_BACKEND)
    return backend_class(**backend_options(backend_class))
