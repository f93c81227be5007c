"""Admin: conversations and messages by status, and the staff-only "Active streams" page.

The Active streams page lists the registry of every instance (``list_active_sync``). Its cancels
are the "Cancel selected streams" admin action, which calls ``services.stream_cancel``: the same
path as the WebSocket's Stop, so an operator's cancel is checked, flagged and stored exactly like a
user's, and the user's page shows the reply as stopped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from . import services
from .cancellation import StoreUnavailable, StreamInfo
from .exceptions import NOT_FOUND, ClientError
from .identity import Owner
from .models import Conversation, Message
from .runtime import get_store

CANCEL_ACTION = "cancel_selected_streams"


# --- Cancelling ----------------------------------------------------------------------------------


@dataclass
class CancelReport:
    """What happened to each requested cancel (see ``services.CancelResult``)."""

    delivered: int = 0
    #: The flag could not be written and the stream does not run in this process.
    undelivered: int = 0
    #: Already finished (or never a streaming reply): nothing to cancel.
    not_running: int = 0
    errors: int = 0


def cancel_streams(*, user: Any, message_ids: Iterable[uuid.UUID]) -> CancelReport:
    """Cancel each reply as staff through the WebSocket's own service (from sync admin code)."""
    owner = Owner(key="", user_id=user.pk, is_staff=True)
    cancel = async_to_sync(services.stream_cancel)
    report = CancelReport()
    for message_id in message_ids:
        try:
            result = cancel(owner=owner, message_id=message_id)
        except ClientError as exc:
            if exc.code == NOT_FOUND:
                report.not_running += 1
            else:
                report.errors += 1
            continue
        if result.delivered:
            report.delivered += 1
        else:
            report.undelivered += 1
    return report


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def report_cancels(
    modeladmin: admin.ModelAdmin, request: HttpRequest, report: CancelReport
) -> None:
    if report.delivered:
        modeladmin.message_user(
            request, f"{_plural(report.delivered, 'cancel')} delivered.", messages.SUCCESS
        )
    if report.undelivered:
        modeladmin.message_user(
            request,
            f"{_plural(report.undelivered, 'cancel')} not delivered: the cancel store is "
            "unavailable and the stream runs on another instance. Try again.",
            messages.ERROR,
        )
    if report.not_running:
        modeladmin.message_user(
            request,
            f"{_plural(report.not_running, 'selected reply')} had already finished.",
            messages.INFO,
        )
    if report.errors:
        modeladmin.message_user(
            request, f"{_plural(report.errors, 'cancel')} refused.", messages.ERROR
        )


# --- Conversations -------------------------------------------------------------------------------


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ("role", "status", "text", "chunks", "instance", "error", "created_at", "finished_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReplyStatusFilter(admin.SimpleListFilter):
    """Conversations having at least one reply in the chosen status."""

    title = "reply status"
    parameter_name = "reply_status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(Message.Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in Message.Status.values:
            return queryset.filter(
                messages__role=Message.Role.ASSISTANT, messages__status=self.value()
            ).distinct()
        return queryset


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title_or_id", "owner", "message_count", "updated_at")
    list_filter = (ReplyStatusFilter, "updated_at")
    search_fields = ("id", "title", "owner_key", "owner_user__username")
    readonly_fields = ("id", "owner_key", "owner_user", "created_at", "updated_at")
    date_hierarchy = "updated_at"
    inlines = [MessageInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # Conversations start on the chat page.

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related("owner_user")
            .annotate(message_count=Count("messages"))
        )

    @admin.display(description="conversation", ordering="title")
    def title_or_id(self, obj: Conversation) -> str:
        return Truncator(str(obj)).chars(60)

    @admin.display(description="owner")
    def owner(self, obj: Conversation) -> str:
        return owner_label(obj.owner_key, obj.owner_user.get_username() if obj.owner_user else None)

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj: Any) -> int:
        return obj.message_count


# --- Messages and the Active streams page ------------------------------------------------


def owner_label(owner_key: str, username: str | None) -> str:
    """Who owns a stream, without printing the whole session owner key."""
    if username:
        return username
    return f"session {owner_key[:8]}…" if owner_key else "-"


@dataclass(frozen=True)
class StreamRow:
    """One registry entry, dressed for the Active streams table."""

    info: StreamInfo
    owner: str
    conversation_title: str
    started: datetime
    running_for: float
    heartbeat_age: float


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "conversation_link",
        "role",
        "status",
        "preview",
        "chunks",
        "instance",
        "created_at",
    )
    list_filter = ("status", "role", "instance", "created_at")
    search_fields = ("id", "text", "conversation__id", "conversation__title")
    list_select_related = ("conversation",)
    readonly_fields = (
        "id",
        "conversation",
        "role",
        "status",
        "text",
        "chunks",
        "instance",
        "error",
        "created_at",
        "finished_at",
    )
    date_hierarchy = "created_at"
    actions = [CANCEL_ACTION]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="id")
    def short_id(self, obj: Message) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="conversation", ordering="conversation__title")
    def conversation_link(self, obj: Message) -> str:
        url = reverse(
            f"{self.admin_site.name}:streaming_conversation_change", args=[obj.conversation_id]
        )
        return format_html('<a href="{}">{}</a>', url, Truncator(str(obj.conversation)).chars(40))

    @admin.display(description="text")
    def preview(self, obj: Message) -> str:
        return Truncator(obj.text).chars(60)

    @admin.action(permissions=["change"], description="Cancel selected streams")
    def cancel_selected_streams(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Cancel the streaming replies among the selected messages, wherever they run."""
        streaming = list(
            queryset.filter(
                role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
            ).values_list("pk", flat=True)
        )
        report = cancel_streams(user=request.user, message_ids=streaming)
        report.not_running += queryset.count() - len(streaming)
        report_cancels(self, request, report)

    # The page

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "active-streams/",
                self.admin_site.admin_view(self.active_streams_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_active_streams",
            ),
            *super().get_urls(),
        ]

    def active_streams_view(self, request: HttpRequest) -> HttpResponse:
        """GET lists the registry of every instance; POST cancels the selected (or one) stream."""
        if not (self.has_view_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        if request.method == "POST":
            return self._cancel_from_page(request)
        try:
            streams = get_store().list_active_sync()
            unavailable = False
        except StoreUnavailable:
            streams, unavailable = [], True
            self.message_user(
                request, "The stream registry (Redis) is unavailable right now.", messages.ERROR
            )
        # The registry drops ended streams in batches; hide those the database already finished.
        finished = set(
            Message.objects.filter(pk__in=[s.message_id for s in streams])
            .exclude(status=Message.Status.STREAMING)
            .values_list("pk", flat=True)
        )
        streams = [s for s in streams if uuid.UUID(s.message_id) not in finished]
        rows = self._rows(streams)
        context = {
            **self.admin_site.each_context(request),
            "title": "Active streams",
            "subtitle": None,
            "opts": self.opts,
            "rows": rows,
            "stale_count": sum(1 for row in rows if row.info.stale),
            "instance_count": len({row.info.instance for row in rows}),
            "unavailable": unavailable,
            "can_cancel": CANCEL_ACTION in self.get_actions(request),
            "cancel_action": CANCEL_ACTION,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/streaming/active_streams.html", context)

    def _cancel_from_page(self, request: HttpRequest) -> HttpResponse:
        actions = self.get_actions(request)  # Filtered by the action's `permissions`.
        if CANCEL_ACTION not in actions:
            raise PermissionDenied
        if "cancel" in request.POST:
            raw_ids = [request.POST["cancel"]]
        elif request.POST.get("action") == CANCEL_ACTION:
            raw_ids = request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)
        else:
            raw_ids = []
            self.message_user(request, "Choose the action to run.", messages.WARNING)
        ids = []
        for raw in raw_ids:
            try:
                ids.append(uuid.UUID(raw))
            except ValueError:
                continue
        if raw_ids and not ids:
            self.message_user(request, "Select at least one stream to cancel.", messages.WARNING)
        elif ids:
            func, _name, _description = actions[CANCEL_ACTION]
            queryset = Message.objects.filter(pk__in=ids)
            func(self, request, queryset)
            missing = len(set(ids)) - queryset.count()
            if missing:
                self.message_user(
                    request, f"{_plural(missing, 'selected reply')} not found.", messages.INFO
                )
        return HttpResponseRedirect(request.get_full_path())

    def _rows(self, streams: list[StreamInfo]) -> list[StreamRow]:
        titles = dict(
            Conversation.objects.filter(pk__in={s.conversation_id for s in streams}).values_list(
                "pk", "title"
            )
        )
        user_ids = {s.owner_user_id for s in streams if s.owner_user_id is not None}
        User = get_user_model()
        usernames = {user.pk: user.get_username() for user in User.objects.filter(pk__in=user_ids)}
        now = time.time()
        rows = []
        for s in streams:
            try:
                title = titles.get(uuid.UUID(s.conversation_id), "")
            except ValueError:
                title = ""
            rows.append(
                StreamRow(
                    info=s,
                    owner=owner_label(s.owner_key, usernames.get(s.owner_user_id)),
                    conversation_title=Truncator(title or s.conversation_id).chars(50),
                    started=datetime.fromtimestamp(s.started_at, tz=UTC),
                    running_for=max(0.0, now - s.started_at),
                    heartbeat_age=max(0.0, now - s.heartbeat_at),
                )
            )
        return rows
