"""ASGI entry point: HTTP through Django, WebSockets through Channels.

The WebSocket stack checks ``Origin`` against ``ALLOWED_HOSTS`` and loads the session and user,
which the chat consumer needs to know who owns the streams it starts.
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from streaming.routing import websocket_urlpatterns  # noqa: E402

# Everything loaded so far lives as long as the process: move it out of the collector's sight, so
# full collections only walk the objects of live connections (shorter GC pauses under load).
gc.collect()
gc.freeze()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
