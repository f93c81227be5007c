"""How many bytes a WebSocket client has left unread, so a client that stops reading can be dropped.

Why this exists: ASGI has no backpressure. Daphne hands every ``websocket.send`` to Twisted, whose
transport buffers without limit once the kernel's socket buffers are full, so a client that stops
reading grows server memory by every chunk of its reply. Daphne's keepalive (``--ping-interval``,
``--ping-timeout``) drops a client that does not answer pings, but it only pings a socket that has
been *silent* for the interval: a client that keeps sending frames and never reads is never pinged.

So the consumer asks, before each frame, how much is still queued in Twisted for its socket, and
drops the socket past a cap. The probe reads daphne's and Twisted's internals (the ``send``
callable is ``functools.partial(server.handle_reply, protocol)``; the transport keeps
``dataBuffer``/``offset``/``_tempDataLen``); anywhere else (the test communicator, another server)
it answers ``None`` and only the ping timeout applies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

Probe = Callable[[], int]


def _find_transport(send: Any) -> Any | None:
    for _ in range(8):  # Unwrap channels' session wrapper(s) down to daphne's partial.
        if isinstance(send, functools.partial) and send.args:
            return getattr(send.args[0], "transport", None)
        owner = getattr(send, "__self__", None)
        inner = getattr(owner, "real_send", None)
        if inner is None:
            return None
        send = inner
    return None


def backlog_probe(send: Any) -> Probe | None:
    """A function returning the bytes queued for this socket in Twisted, or None if unknowable."""
    transport = _find_transport(send)
    if transport is None or not hasattr(transport, "dataBuffer"):
        return None

    def queued() -> int:
        try:
            return (
                len(transport.dataBuffer)
                - int(transport.offset)
                + int(getattr(transport, "_tempDataLen", 0))
            )
        except (AttributeError, TypeError):
            return 0

    return queued
