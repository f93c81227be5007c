"""The stream lifecycle: start a reply, run it chunk by chunk, cancel it, finish it.

Consumers and views call these functions and nothing below them. Every function is keyword-only
and typed; ownership is checked here, on every path, so no caller can forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection, transaction
from django.utils import timezone

from . import metrics
from .backends import Backend, BackendError, Turn, get_backend
from .cancellation import StoreUnavailable
from .exceptions import FORBIDDEN, NOT_FOUND, ClientError
from .identity import Owner
from .instance import InstanceStreams, LocalStream, StopReason, all_instance_streams
from .log import bind_stream
from .models import Conversation, Message
from .runtime import get_limits, get_store, get_streams

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

#: How long a stream may take to save and clean up after it was told to stop.
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class CancelResult:
    message_id: uuid.UUID
    #: True when the cancel will take effect: the flag was written, or the stream runs here.
    delivered: bool


# --- Database steps (sync, run through database_sync_to_async) -------------------------------


def _create_turn(
    owner: Owner, text: str, conversation_id: uuid.UUID | None, instance: str
) -> tuple[Conversation, Message, list[Turn]]:
    with transaction.atomic():
        if conversation_id is None:
            conversation = Conversation.objects.create(
                owner_key=owner.key, owner_user_id=owner.user_id, title=text.strip()[:80]
            )
            history: list[Turn] = []
        else:
            conversation = Conversation.objects.filter(pk=conversation_id).first()
            if conversation is None:
                raise ClientError(NOT_FOUND, "Conversation not found.")
            if not owner.owns(
                owner_key=conversation.owner_key, owner_user_id=conversation.owner_user_id
            ):
                raise ClientError(FORBIDDEN, "This conversation belongs to someone else.")
            history = [
                Turn(role=m.role, text=m.text)
                for m in conversation.messages.exclude(text="").only("role", "text")
            ]
            conversation.save(update_fields=["updated_at"])
        Message.objects.create(
            conversation=conversation,
            role=Message.Role.USER,
            text=text,
            status=Message.Status.COMPLETED,
        )
        reply = Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            instance=instance,
        )
    return conversation, reply, history


def _finish_message(message_id: str, status: str, text: str, chunks: int, error: str) -> None:
    Message.objects.filter(pk=message_id).update(
        status=status, text=text, chunks=chunks, error=error[:500], finished_at=timezone.now()
    )


def _save_checkpoints(snapshots: list[tuple[str, str, int, int]]) -> None:
    """Append each stream's new text since its last checkpoint, in one transaction.

    A snapshot is ``(message_id, new_text, chunks_before, chunks_after)``. The row is only touched
    while the reply is still streaming (a final save is never undone) and while its stored chunk
    count is ``chunks_before``, so a checkpoint can never be applied twice or out of order. Plain
    ``executemany``: compiling ORM expressions per row would cost CPU under the GIL that a
    thousand streams' chunks need.
    """
    if not snapshots:
        return
    table = connection.ops.quote_name(Message._meta.db_table)
    pk_field = Message._meta.pk
    streaming = Message.Status.STREAMING.value
    rows = [
        (new_text, after, pk_field.get_db_prep_value(uuid.UUID(pk), connection), streaming, before)
        for pk, new_text, before, after in snapshots
    ]
    # One transaction: one commit (one WAL flush) per checkpoint, not one per row.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET text = text || %s, chunks = %s "
            "WHERE id = %s AND status = %s AND chunks = %s",
            rows,
        )


async def checkpoint_streams(streams: list[LocalStream]) -> None:
    """Save the text sent so far of running streams (called by ``InstanceStreams``)."""
    snapshots = []
    for stream in streams:
        before, after = stream.checkpointed_chunks, stream.chunks
        snapshots.append((stream.message_id, "".join(stream.parts[before:after]), before, after))
    await database_sync_to_async(_save_checkpoints)(snapshots)
    for stream, (_, _, _, after) in zip(streams, snapshots, strict=True):
        stream.checkpointed_chunks = after


def _owned_message(owner: Owner, message_id: uuid.UUID) -> Message:
    message = Message.objects.select_related("conversation").filter(pk=message_id).first()
    if message is None:
        raise ClientError(NOT_FOUND, "No such message.")
    conversation = message.conversation
    if not owner.owns(owner_key=conversation.owner_key, owner_user_id=conversation.owner_user_id):
        raise ClientError(FORBIDDEN, "This message belongs to someone else.")
    return message


# --- Start and run -----------------------------------------------------------------------------


async def stream_start(
    *,
    owner: Owner,
    text: str,
    conversation_id: uuid.UUID | None,
    send: Send,
    backend: Backend | None = None,
) -> LocalStream:
    """Store the user's message, announce the reply and start generating it in a task.

    The returned stream's ``task`` belongs to the caller, who must stop and await it when the
    client goes away (see ``stream_stop_and_wait``).
    """
    await get_limits().admit_message(owner)
    streams = get_streams()
    backend = backend or get_backend()  # Before storing anything: it may be misconfigured.
    conversation, reply, history = await database_sync_to_async(_create_turn)(
        owner, text, conversation_id, streams.instance_id
    )
    stream = LocalStream(
        message_id=str(reply.pk),
        conversation_id=str(conversation.pk),
        owner_key=owner.key,
        owner_user_id=owner.user_id,
        instance=streams.instance_id,
    )
    # Known locally before the client learns its id, so no cancel can miss it.
    await streams.add(stream)
    try:
        await send(
            {
                "type": "stream.started",
                "message_id": stream.message_id,
                "conversation_id": stream.conversation_id,
            }
        )
    except Exception:
        # The client left already: the task below ends at once and saves "interrupted".
        stream.stop(StopReason.INTERRUPTED)
    metrics.stream_started()
    source = backend.stream(prompt=text, history=history)
    stream.task = asyncio.create_task(
        _run_stream(stream=stream, source=source, send=send, streams=streams),
        name=f"stream-{stream.message_id}",
    )
    return stream


async def _run_stream(
    *, stream: LocalStream, source: AsyncIterator[str], send: Send, streams: InstanceStreams
) -> None:
    """Send chunks until the source ends or the stream is stopped, then finish the message."""
    bind_stream(stream.message_id)
    status = Message.Status.COMPLETED
    error = ""
    external_cancel = False
    try:
        async with contextlib.aclosing(source) as chunks:  # type: ignore[type-var]
            while stream.stop_reason is None:
                stream.awaiting_source = True
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                finally:
                    stream.awaiting_source = False
                if stream.stop_reason is not None:
                    break  # Produced after Stop: never shown, so never stored.
                frame = {
                    "type": "stream.chunk",
                    "message_id": stream.message_id,
                    "index": stream.chunks,
                    "text": chunk,
                }
                try:
                    await send(frame)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Daphne raises once the socket is closed: the client left mid-reply.
                    logger.info("Stream %s lost its client: %r", stream.message_id, exc)
                    stream.stop(StopReason.INTERRUPTED)
                    break
                stream.parts.append(chunk)
                await streams.chunk_sent(stream)
                metrics.chunk_sent(chunks=stream.chunks, started_at=stream.started_at)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if stream.stop_reason is not None and task is not None:
            task.uncancel()  # Our own stop interrupted the wait on the model.
        else:
            external_cancel = True
            stream.stop_reason = StopReason.INTERRUPTED
    except BackendError as exc:
        status, error = Message.Status.FAILED, str(exc) or "The model failed."
        logger.warning("Stream %s failed: %s", stream.message_id, error)
    except Exception:
        status, error = Message.Status.FAILED, "The model failed unexpectedly."
        logger.exception("Stream %s crashed", stream.message_id)
    if stream.stop_reason is not None and status == Message.Status.COMPLETED:
        status = Message.Status(stream.stop_reason.value)
        if stream.stop_reason is StopReason.INTERRUPTED and not error:
            error = stream.stop_error or "The connection was lost before the reply finished."
    metrics.stream_stopped(stream.message_id)
    stream.ended = True
    try:
        await _finish(stream=stream, status=status, error=error, send=send, streams=streams)
    finally:
        if external_cancel:
            raise asyncio.CancelledError


async def _finish(
    *, stream: LocalStream, status: str, error: str, send: Send, streams: InstanceStreams
) -> None:
    # Save before telling the client, so a reload right after "finished" shows the final state.
    try:
        await database_sync_to_async(_finish_message)(
            stream.message_id, status, stream.text, stream.chunks, error
        )
    except Exception:
        logger.exception("Could not save the end of stream %s", stream.message_id)
    await streams.remove(stream)
    metrics.stream_finished(stream.message_id, status)
    frame: dict[str, Any] = {
        "type": "stream.finished",
        "message_id": stream.message_id,
        "status": status,
        "chunks": stream.chunks,
    }
    if error:
        frame["error"] = error
    with contextlib.suppress(Exception):
        await send(frame)
    logger.info("Stream %s finished %s after %d chunks", stream.message_id, status, stream.chunks)


async def stream_stop_and_wait(
    stream: LocalStream, *, reason: StopReason = StopReason.INTERRUPTED
) -> None:
    """Stop a stream this caller owns and wait until it has saved its text (client went away)."""
    task = stream.task
    stream.stop(reason)
    if task is None or task.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_SECONDS)
    except TimeoutError:
        logger.error(
            "Stream %s did not stop within %.0f s",
            stream.message_id,
            STOP_GRACE_SECONDS,
            extra={"stream_id": stream.message_id},
        )
        task.cancel()
    except asyncio.CancelledError:
        task.cancel()
        raise


# --- Cancel ------------------------------------------------------------------------------------


def _stop_everywhere_in_process(message_id: str) -> bool:
    """Stop the stream if any event loop of this process runs it (thread-safe)."""
    found = False
    for streams in all_instance_streams():
        if message_id in streams.streams:
            metrics.cancel_arrived(message_id, metrics.LOCAL)
            found |= streams.stop_threadsafe(message_id, StopReason.CANCELLED)
    return found


async def stream_cancel(*, owner: Owner, message_id: uuid.UUID) -> CancelResult:
    """Cancel a running reply for its owner (or staff), wherever it runs.

    Raises ``ClientError`` ``not_found`` for unknown or already finished replies and ``forbidden``
    for someone else's. A stream on this instance stops at once; for one elsewhere the flag is
    written and its instance's watcher stops it on its next check.
    """
    message = await database_sync_to_async(_owned_message)(owner, message_id)
    if message.role != Message.Role.ASSISTANT or message.status != Message.Status.STREAMING:
        raise ClientError(NOT_FOUND, "This reply is not streaming.")
    key = str(message_id)
    if _stop_everywhere_in_process(key):
        # It runs here and is stopping now: no Redis round trip, so a same-instance Stop is
        # instant and works whatever state Redis is in.
        metrics.cancel_request(metrics.LOCAL, "stopped")
        logger.info("Cancel of %s: stopped locally", key, extra={"stream_id": key})
        return CancelResult(message_id=message_id, delivered=True)
    streams = get_streams()
    try:
        if streams.push:
            # Flag and push notice to the instance that runs it, in one round trip.
            pushed = await get_store().cancel_and_notify(key, message.instance)
        else:
            await get_store().set_cancelled(key)
            pushed = 0
    except StoreUnavailable as exc:
        metrics.redis_error("cancel")
        metrics.cancel_request(metrics.FLAG, "failed")
        logger.error(
            "Could not write the cancel flag of %s: %s", key, exc, extra={"stream_id": key}
        )
        return CancelResult(message_id=message_id, delivered=False)
    metrics.cancel_request(metrics.FLAG, "written")
    if streams.push:
        metrics.cancel_request(metrics.PUSH, "published" if pushed else "no_subscriber")
    logger.info(
        "Cancel of %s: flag written, pushed to %d subscriber(s)",
        key,
        pushed,
        extra={"stream_id": key},
    )
    return CancelResult(message_id=message_id, delivered=True)
