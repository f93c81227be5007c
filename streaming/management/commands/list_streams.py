"""``manage.py list_streams``: the streams running on every instance, as the registry sees them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming.cancellation import StoreUnavailable, StreamInfo
from streaming.runtime import get_store
from streaming.selectors import stream_as_json


def owner_label(info: StreamInfo) -> str:
    """Who owns a stream, without printing the session's secret owner key."""
    if info.owner_user_id is not None:
        return f"user:{info.owner_user_id}"
    return f"session:{info.owner_key[:6]}…" if info.owner_key else "-"


class Command(BaseCommand):
    help = "List the streams running on every instance (registry in Redis, or this process)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="One JSON object per line.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            streams = get_store().list_active_sync()
        except StoreUnavailable as exc:
            raise CommandError(f"The stream registry is unavailable: {exc}") from exc
        if options["json"]:
            for info in streams:
                self.stdout.write(json.dumps({**stream_as_json(info), "owner": owner_label(info)}))
            return
        if not streams:
            self.stdout.write("No active streams.")
            return
        now = time.time()
        header = f"{'MESSAGE':36}  {'INSTANCE':24}  {'OWNER':16}  {'STARTED (UTC)':19}  "
        self.stdout.write(header + f"{'CHUNKS':>6}  {'HEARTBEAT':>9}  STATE")
        for info in streams:
            started = datetime.fromtimestamp(info.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            state = "STALE" if info.stale else "ok"
            self.stdout.write(
                f"{info.message_id:36}  {info.instance[:24]:24}  {owner_label(info)[:16]:16}  "
                f"{started:19}  {info.chunks:>6}  {now - info.heartbeat_at:>8.1f}s  {state}"
            )
