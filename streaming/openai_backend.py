"""Token source for any OpenAI-compatible chat completions API (OpenAI, vLLM, Ollama, llama.cpp).

Chosen with ``STREAM_BACKEND=openai`` and configured by the ``OPENAI_*`` settings, which arrive as
constructor keywords. The official ``openai`` client speaks the protocol and parses the SSE stream;
this module only maps our conversation onto its messages, its chunks onto text, and its errors onto
``BackendError`` messages a user can read.

Stop stops the model: the response is held in ``async with``, so when the streaming loop closes
this generator (``aclose()`` on Stop or disconnect, or a cancelled task while waiting for a chunk)
the HTTP response is closed at once, which closes the connection the model server is writing to.
One client per stream: its connections belong to the event loop that opened them, and the
handshake is small next to a reply that lasts seconds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai

from .backends import BackendError, Turn

logger = logging.getLogger(__name__)

#: The roles of earlier turns that are sent as context; anything else is skipped.
_ROLES = frozenset({"user", "assistant"})


class OpenAIBackend:
    """Streams ``model``'s reply from ``base_url`` (``/chat/completions`` with ``stream=True``)."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str = "",
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_tokens: int | None = None,
        temperature: float | None = None,
        system_prompt: str = "",
        max_history: int = 50,
        max_retries: int = 0,
    ) -> None:
        if not model:
            raise ValueError("Expected a model name but got an empty string")
        self.model = model
        self.base_url = base_url
        # Local servers ignore the key, but the client insists on one (and must never fall back
        # to reading OPENAI_API_KEY from the environment itself).
        self.api_key = api_key or "unused"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system_prompt = system_prompt
        self.max_history = max_history
        self.max_retries = max_retries

    def messages(self, *, prompt: str, history: Sequence[Turn]) -> list[dict[str, str]]:
        """The request's messages: system prompt, the latest ``max_history`` turns, the prompt."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        earlier = [t for t in history if t.role in _ROLES and t.text]
        if self.max_history >= 0:
            earlier = earlier[-self.max_history :] if self.max_history else []
        messages.extend({"role": t.role, "content": t.text} for t in earlier)
        messages.append({"role": "user", "content": prompt})
        return messages

    def _request(self, *, prompt: str, history: Sequence[Turn]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(prompt=prompt, history=history),
            "stream": True,
        }
        if self.max_tokens:
            request["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            request["temperature"] = self.temperature
        return request

    async def stream(self, *, prompt: str, history: Sequence[Turn]) -> AsyncIterator[str]:
        client = openai.AsyncOpenAI(
            api_key=self.api_key,
            base_url=self.base_url,
            # ``timeout`` bounds every wait for bytes: a model silent that long has failed.
            timeout=openai.Timeout(self.timeout, connect=self.connect_timeout),
            max_retries=self.max_retries,
        )
        async with client:
            try:
                response = await client.chat.completions.create(
                    **self._request(prompt=prompt, history=history)
                )
            except openai.OpenAIError as exc:
                raise self._error(exc) from exc
            async with response:
                while True:
                    try:
                        chunk = await anext(response)
                    except StopAsyncIteration:
                        return
                    except (openai.OpenAIError, ValueError) as exc:
                        raise self._error(exc) from exc
                    text = _chunk_text(chunk)
                    if text:
                        yield text

    def _error(self, exc: Exception) -> BackendError:
        """Log the upstream failure in full and return the message the user sees."""
        message = _describe(exc, model=self.model)
        logger.warning("Model request to %s failed: %s (%r)", self.base_url, message, exc)
        return BackendError(message)


def _chunk_text(chunk: Any) -> str:
    """The text of one streamed chunk; chunks without text (role, usage, tool calls) give ''."""
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return ""
    delta = getattr(choices[0], "delta", None)
    content = getattr(delta, "content", None)
    return content if isinstance(content, str) else ""


def _describe(exc: Exception, *, model: str) -> str:
    """A short, user-readable account of an upstream failure (details go to the log only)."""
    if isinstance(exc, openai.APITimeoutError):
        return "The model did not answer in time. Please try again."
    if isinstance(exc, openai.APIConnectionError):
        return "The model server could not be reached. Please try again later."
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "The model server refused our credentials; an operator needs to fix the API key."
    if isinstance(exc, openai.NotFoundError):
        return f"The model server does not offer the model {model!r}."
    if isinstance(exc, openai.RateLimitError):
        return "The model is busy right now (rate limited). Please try again shortly."
    if isinstance(exc, openai.BadRequestError):
        return "The model server rejected the request (the conversation may be too long)."
    if isinstance(exc, openai.APIStatusError):
        return f"The model server failed (HTTP {exc.status_code}). Please try again later."
    if isinstance(exc, openai.APIError):
        return "The model stopped with an error. Please try again."
    if isinstance(exc, ValueError):
        return "The model server sent a reply that could not be read."
    return "The model failed."
