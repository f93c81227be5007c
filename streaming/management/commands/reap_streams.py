"""``manage.py reap_streams``: mark replies orphaned by a dead instance ``interrupted`` now.

Every instance already reaps periodically (``STREAM_REAPER_SECONDS``); this is for cron when no
instance is left running, and for operators who just killed one and do not want to wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from streaming.reaper import reap_orphaned_streams
from streaming.runtime import get_store


class Command(BaseCommand):
    help = "Mark replies left 'streaming' by a dead instance as 'interrupted'."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--grace",
            type=float,
            default=settings.STREAM_REAPER_GRACE_SECONDS,
            help="Only reap replies older than this many seconds (default: "
            "STREAM_REAPER_GRACE_SECONDS).",
        )

    def handle(self, *args: Any, grace: float, **options: Any) -> None:
        async def run() -> list[str]:
            store = get_store()
            try:
                return await reap_orphaned_streams(store=store, grace_seconds=grace)
            finally:
                await store.aclose()

        reaped = asyncio.run(run())
        for message_id in reaped:
            self.stdout.write(message_id)
        self.stderr.write(f"Reaped {len(reaped)} orphaned replies.")
