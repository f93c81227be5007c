"""Graceful shutdown: on SIGTERM, running replies end ``interrupted`` with their text saved.

What daphne 4.2.3 does on SIGTERM without this: Twisted's signal handler calls ``reactor.stop()``;
daphne's "before shutdown" trigger (``Server.kill_all_applications``) *cancels* every application
instance, so no consumer ever gets ``websocket.disconnect`` and ``disconnect()`` never runs. The
stream tasks are not children of the application instance: they keep running until the "during
shutdown" phase closes every socket and stops the loop, and die there with their message still
``streaming`` and their text lost (the reaper would later mark them ``interrupted``, empty).

So we add our own "before shutdown" trigger: it stops every stream of every loop with
``interrupted`` and returns a Deferred that fires when they have saved (bounded by ``timeout``).
Twisted waits for all "before" triggers, so the sockets are still open while the streams save and
send ``stream.finished``; a short pause then lets Twisted flush those frames to the clients.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from .instance import StopReason, all_instance_streams

logger = logging.getLogger(__name__)

SHUTDOWN_ERROR = "The server restarted before the reply finished."

#: Reactors that already have our trigger (one per process in practice).
_hooked: set[int] = set()


async def interrupt_all_streams(*, grace_seconds: float, flush_seconds: float = 0.2) -> int:
    """Stop every stream of this process as ``interrupted`` and wait for their saves.

    Returns how many streams were stopped. Called by the shutdown trigger; safe to call anywhere.
    """
    loop = asyncio.get_running_loop()
    tasks = []
    for streams in all_instance_streams():
        for stream in list(streams.streams.values()):
            streams.stop_threadsafe(stream.message_id, StopReason.INTERRUPTED, error=SHUTDOWN_ERROR)
            if stream.task is not None and stream.task.get_loop() is loop:
                tasks.append(stream.task)
    if tasks:
        logger.warning("Shutting down: interrupting %d running replies", len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        if pending:
            logger.error("%d replies did not save within %.1f s", len(pending), grace_seconds)
        await asyncio.sleep(flush_seconds)
    return len(tasks)


def install_shutdown_hook(*, grace_seconds: float) -> bool:
    """Register the trigger with the running Twisted reactor (daphne); True once installed.

    Called on every WebSocket connect; does nothing outside daphne (tests, other servers) and never
    imports the reactor itself, which would install Twisted's default one.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return False
    if id(reactor) in _hooked:
        return True
    _hooked.add(id(reactor))

    def before_shutdown() -> object:
        from twisted.internet import defer

        future = asyncio.ensure_future(interrupt_all_streams(grace_seconds=grace_seconds))
        return defer.Deferred.fromFuture(future)

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return True
