"""WebSocket URL routes of the streaming app."""

from django.conf import settings
from django.urls import path

from .consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
]

if settings.STREAM_BENCH_BARE:
    from .bare import BareStreamConsumer

    websocket_urlpatterns.append(path("ws/bare/", BareStreamConsumer.as_asgi()))
