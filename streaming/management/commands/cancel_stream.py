"""``manage.py cancel_stream <message_id>``: stop a reply on whichever instance runs it."""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming import services
from streaming.exceptions import ClientError
from streaming.identity import Owner
from streaming.runtime import get_store

#: Operators act as staff: they may cancel anyone's stream.
OPERATOR = Owner(key="", user_id=None, is_staff=True)


async def cancel(message_id: uuid.UUID) -> services.CancelResult:
    """The service the WebSocket and the admin use; closes this loop's Redis client after."""
    try:
        return await services.stream_cancel(owner=OPERATOR, message_id=message_id)
    finally:
        await get_store().aclose()


class Command(BaseCommand):
    help = "Cancel a streaming reply by its message id, wherever it runs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("message_id", help="The reply's message id (see list_streams).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            message_id = uuid.UUID(options["message_id"])
        except ValueError:
            raise CommandError(f"{options['message_id']!r} is not a message id (UUID).") from None
        try:
            result = async_to_sync(cancel)(message_id)
        except ClientError as exc:
            raise CommandError(exc.message) from exc
        if not result.delivered:
            raise CommandError(
                f"The cancel of {message_id} could not be delivered: Redis is unavailable and the "
                "stream does not run in this process. Try again when Redis is back."
            )
        self.stdout.write(f"Cancel of {message_id} delivered.")
