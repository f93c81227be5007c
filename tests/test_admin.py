"""The admin: the staff-only Active streams page, its cancels, and status filters."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from streaming.cancellation import StreamInfo
from streaming.models import Conversation, Message
from streaming.runtime import get_store

pytestmark = pytest.mark.django_db

PAGE = "admin:streaming_message_active_streams"


def make_reply(*, status: str = Message.Status.STREAMING, title: str = "Hello") -> Message:
    conversation = Conversation.objects.create(owner_key="owner-key-123456", title=title)
    Message.objects.create(
        conversation=conversation, role=Message.Role.USER, text=title, status="completed"
    )
    return Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, status=status, instance="i-1"
    )


def register(reply: Message, *, instance: str = "i-1", chunks: int = 7) -> StreamInfo:
    info = StreamInfo(
        message_id=str(reply.pk),
        conversation_id=str(reply.conversation_id),
        owner_key=reply.conversation.owner_key,
        owner_user_id=None,
        instance=instance,
        started_at=time.time() - 3,
        chunks=chunks,
    )
    async_to_sync(get_store().heartbeat)(instance, [info])
    return info


def cancelled(reply: Message) -> bool:
    return async_to_sync(get_store().is_cancelled)(str(reply.pk))


def staff_client(*perms: str) -> Client:
    user = User.objects.create_user("operator", password="x", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser_client(admin_client: Client) -> Client:
    return admin_client


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_page_is_for_staff_only(client: Client) -> None:
    response = client.get(reverse(PAGE))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
    User.objects.create_user("visitor", password="x")
    client.login(username="visitor", password="x")
    assert client.get(reverse(PAGE)).status_code == 302


def test_staff_without_message_permissions_is_refused() -> None:
    assert staff_client().get(reverse(PAGE)).status_code == 403


def test_view_permission_lists_streams_but_cannot_cancel() -> None:
    reply = make_reply()
    register(reply)
    client = staff_client("view_message")
    response = client.get(reverse(PAGE))
    assert response.status_code == 200
    assert f'data-message-id="{reply.pk}"' in response.text
    assert "cancel-stream" not in response.text
    assert client.post(reverse(PAGE), {"cancel": str(reply.pk)}).status_code == 403
    assert not cancelled(reply)


def test_lists_every_instance_and_marks_stale_streams(superuser_client: Client) -> None:
    live, dead = make_reply(title="live one"), make_reply(title="dead one")
    register(live, instance="i-live")
    register(dead, instance="i-dead")
    store = get_store()
    store._heartbeats["i-dead"] = store.clock() - store.stale_after - 1  # type: ignore[attr-defined]
    response = superuser_client.get(reverse(PAGE))
    assert response.status_code == 200
    rows = {str(row.info.message_id): row for row in response.context["rows"]}
    assert rows[str(live.pk)].info.stale is False
    assert rows[str(dead.pk)].info.stale is True
    assert rows[str(live.pk)].owner == "session owner-ke…"
    assert f'data-message-id="{dead.pk}" data-stale="true"' in response.text
    assert "STALE" in response.text
    assert "2</strong> running streams on\n      <strong>2</strong> instances" in response.text


def test_row_cancel_goes_through_the_stream_cancel_service(superuser_client: Client) -> None:
    reply = make_reply()
    register(reply)
    response = superuser_client.post(reverse(PAGE), {"cancel": str(reply.pk)}, follow=True)
    assert response.redirect_chain == [(reverse(PAGE), 302)]
    assert messages_of(response) == ["1 cancel delivered."]
    assert cancelled(reply)


def test_bulk_cancel_reports_delivered_and_finished(superuser_client: Client) -> None:
    running, finished = make_reply(), make_reply(status=Message.Status.COMPLETED)
    response = superuser_client.post(
        reverse(PAGE),
        {
            "action": "cancel_selected_streams",
            "_selected_action": [str(running.pk), str(finished.pk), "not-a-uuid"],
        },
        follow=True,
    )
    assert messages_of(response) == [
        "1 cancel delivered.",
        "1 selected reply had already finished.",
    ]
    assert cancelled(running)
    assert not cancelled(finished)


def test_bulk_cancel_without_a_selection_warns(superuser_client: Client) -> None:
    response = superuser_client.post(reverse(PAGE), {"action": ""}, follow=True)
    assert messages_of(response) == ["Choose the action to run."]


def test_message_changelist_action_cancels_only_streaming_replies(
    superuser_client: Client,
) -> None:
    running, stopped = make_reply(), make_reply(status=Message.Status.CANCELLED)
    response = superuser_client.post(
        reverse("admin:streaming_message_changelist"),
        {"action": "cancel_selected_streams", "_selected_action": [running.pk, stopped.pk]},
        follow=True,
    )
    assert messages_of(response) == [
        "1 cancel delivered.",
        "1 selected reply had already finished.",
    ]
    assert cancelled(running) and not cancelled(stopped)


def test_cancel_of_an_unknown_reply_is_reported(superuser_client: Client) -> None:
    response = superuser_client.post(reverse(PAGE), {"cancel": str(uuid.uuid4())}, follow=True)
    assert messages_of(response) == ["1 selected reply not found."]


def test_messages_and_conversations_filter_by_status(superuser_client: Client) -> None:
    stopped = make_reply(status=Message.Status.CANCELLED, title="stopped talk")
    make_reply(status=Message.Status.COMPLETED, title="finished talk")
    response = superuser_client.get(
        reverse("admin:streaming_message_changelist"), {"status__exact": "cancelled"}
    )
    assert [m.pk for m in response.context["cl"].result_list] == [stopped.pk]
    response = superuser_client.get(
        reverse("admin:streaming_conversation_changelist"), {"reply_status": "cancelled"}
    )
    assert [c.pk for c in response.context["cl"].result_list] == [stopped.conversation_id]


def test_admin_index_links_to_active_streams(superuser_client: Client) -> None:
    response = superuser_client.get(reverse("admin:index"))
    assert f'href="{reverse(PAGE)}"' in response.text
