"""Conversations and their messages.

The assistant message is created when its stream starts (status ``streaming``) and finished with its
final status and exactly the text that was sent to the client, partial text included.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    #: Opaque owner key kept in the browser session (see ``streaming.identity``).
    owner_key = models.CharField(max_length=64, db_index=True)
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, related_name="messages", on_delete=models.CASCADE
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, db_index=True)
    #: Chunks sent to the client (assistant messages).
    chunks = models.PositiveIntegerField(default=0)
    #: Instance that ran the stream (assistant messages).
    instance = models.CharField(max_length=200, blank=True, db_index=True)
    #: Human-readable reason for a ``failed`` or ``interrupted`` reply.
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "-role"]
        indexes = [models.Index(fields=["status", "instance"])]

    def __str__(self) -> str:
        return f"{self.role} {self.id} ({self.status})"
