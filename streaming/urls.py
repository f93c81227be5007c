"""HTTP routes of the streaming app."""

from django.urls import path

from . import views

app_name = "streaming"

urlpatterns = [
    path("", views.index, name="index"),
    path("api/streams/active/", views.active_streams, name="active-streams"),
    path("api/streams/<uuid:message_id>/cancel/", views.cancel_stream, name="cancel-stream"),
    path("api/conversations/", views.conversations, name="conversations"),
    path(
        "api/conversations/<uuid:conversation_id>/messages/",
        views.conversation_messages,
        name="conversation-messages",
    ),
    path("healthz/", views.healthz, name="healthz"),
    path("metrics", views.metrics_view, name="metrics"),
]
