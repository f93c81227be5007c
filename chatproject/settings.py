"""Django settings for the streaming chat service.

Every environment variable the service reads is read here and nowhere else; components receive
their configuration as explicit arguments built from these settings, so tests can swap them with
``override_settings``. The variables are documented in README.md and ``.env.example``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _env_number(name: str, default: float, *, cast: type = float, minimum: float = 0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {raw!r}")
    return value


DEBUG = _env_bool("DEBUG", True)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    # Development only: a fixed, clearly-insecure key so sessions survive restarts of `make run`.
    SECRET_KEY = "django-insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
if not ALLOWED_HOSTS and DEBUG:
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "streaming",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "chatproject.asgi.application"
WSGI_APPLICATION = None

DATABASE_URL = os.environ.get("DATABASE_URL", "")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(_env_number("DATABASE_CONN_MAX_AGE", 0, cast=int)),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several instances (and the async workers of one) write to one file: wait for the lock
    # instead of failing at once, and use WAL so readers never block the writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve from the finders in development so `make run` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

# --- Behind TLS (docs/security.md) -------------------------------------------------------------

#: The site is served over HTTPS (usually nginx terminating TLS): secure cookies, HSTS, redirect.
HTTPS = _env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", HTTPS)
# Load balancers probe over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
SECURE_HSTS_SECONDS = int(
    _env_number("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0, cast=int, minimum=0)
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", HTTPS)
#: Only when the proxy always sets (overwrites) X-Forwarded-Proto; otherwise clients could forge it.
if _env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Redis, channel layer, instance identity -------------------------------------------------

#: Unset: embedded single-process mode (in-memory channel layer, in-process cancel store).
REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "chat:layer:"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

INSTANCE_ID = os.environ.get("INSTANCE_ID", "") or f"{socket.gethostname()}:{os.getpid()}"

# --- Streaming -------------------------------------------------------------------------------

#: "batched" (default): one batched flag read per instance per check, plus pub/sub push.
#: "poll": the original design (each stream GETs its flag every N chunks, no push), for benchmarks.
STREAM_CANCEL_MODE = os.environ.get("STREAM_CANCEL_MODE", "batched").strip().lower()
if STREAM_CANCEL_MODE not in {"batched", "poll"}:
    raise ImproperlyConfigured(
        f"STREAM_CANCEL_MODE must be 'batched' or 'poll', got {STREAM_CANCEL_MODE!r}"
    )
#: Prefix of every Redis key the streaming app writes.
STREAM_REDIS_PREFIX = os.environ.get("STREAM_REDIS_PREFIX", "chat")
#: Seconds between two chunks of the demo token source.
STREAM_CHUNK_DELAY = _env_number("STREAM_CHUNK_DELAY", 0.1)
#: Seconds the demo source "thinks" before its first chunk (default: one chunk delay).
STREAM_FIRST_CHUNK_DELAY = _env_number("STREAM_FIRST_CHUNK_DELAY", STREAM_CHUNK_DELAY)
#: Words in a demo reply.
DEMO_REPLY_WORDS = int(_env_number("DEMO_REPLY_WORDS", 500, cast=int, minimum=1))
#: A stream's cancel flag is checked at least every this many chunks...
STREAM_CANCEL_CHECK_CHUNKS = int(_env_number("STREAM_CANCEL_CHECK_CHUNKS", 10, cast=int, minimum=1))
#: ...or every this many seconds, whichever comes first (also before the first chunk).
STREAM_CANCEL_CHECK_SECONDS = _env_number("STREAM_CANCEL_CHECK_SECONDS", 0.5, minimum=0.01)
#: Lifetime of a cancel flag: longer than any stream, so a late reader still sees it.
STREAM_CANCEL_FLAG_TTL = int(_env_number("STREAM_CANCEL_FLAG_TTL", 3600, cast=int, minimum=1))
#: Seconds between two registry heartbeats of an instance.
STREAM_HEARTBEAT_SECONDS = _env_number("STREAM_HEARTBEAT_SECONDS", 2.0, minimum=0.05)
#: An instance silent for this long is dead: its streams are marked stale in the registry.
STREAM_STALE_AFTER_SECONDS = _env_number(
    "STREAM_STALE_AFTER_SECONDS", 3 * STREAM_HEARTBEAT_SECONDS, minimum=0.1
)
#: Seconds between two saves of the text of running replies (0: only save when a reply ends).
#: What a user keeps of a reply whose instance crashed.
STREAM_CHECKPOINT_SECONDS = _env_number("STREAM_CHECKPOINT_SECONDS", 2.0, minimum=0)
#: Registry entries of a dead instance vanish by themselves after this long.
STREAM_REGISTRY_TTL = int(_env_number("STREAM_REGISTRY_TTL", 60, cast=int, minimum=1))
#: Upper bound on any single Redis call made by the streaming app (seconds).
STREAM_REDIS_TIMEOUT = _env_number("STREAM_REDIS_TIMEOUT", 0.5, minimum=0.01)
#: Connections one process may hold to Redis for the streaming app; callers wait, never fail.
STREAM_REDIS_MAX_CONNECTIONS = int(
    _env_number("STREAM_REDIS_MAX_CONNECTIONS", 20, cast=int, minimum=2)
)
#: Token source: ``demo``, ``openai`` or the dotted path of a class (see streaming/backends.py).
_BACKEND_ALIASES = {
    "demo": "streaming.backends.DemoBackend",
    "openai": "streaming.openai_backend.OpenAIBackend",
}
STREAM_BACKEND = os.environ.get("STREAM_BACKEND", "").strip() or "demo"
STREAM_BACKEND = _BACKEND_ALIASES.get(STREAM_BACKEND, STREAM_BACKEND)

# An OpenAI-compatible chat completions server (OpenAI, vLLM, Ollama, llama.cpp), used when
# STREAM_BACKEND=openai. Ollama: OPENAI_BASE_URL=http://localhost:11434/v1, any API key.
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "").strip() or "https://api.openai.com/v1"
OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
OPENAI_MODEL = os.environ.get("OPENAI_MODEL", "").strip()
#: Seconds the model may stay silent (before the first chunk or between two) before the reply fails.
OPENAI_TIMEOUT = _env_number("OPENAI_TIMEOUT", 60.0, minimum=0.1)
OPENAI_CONNECT_TIMEOUT = _env_number("OPENAI_CONNECT_TIMEOUT", 10.0, minimum=0.1)
#: Upper bound on a reply's tokens; 0 leaves it to the server.
OPENAI_MAX_TOKENS = int(_env_number("OPENAI_MAX_TOKENS", 0, cast=int))
#: Empty: the server's default temperature.
OPENAI_TEMPERATURE = (
    _env_number("OPENAI_TEMPERATURE", 1.0) if os.environ.get("OPENAI_TEMPERATURE") else None
)
OPENAI_SYSTEM_PROMPT = os.environ.get("OPENAI_SYSTEM_PROMPT", "")
#: Earlier messages of the conversation sent as context (the newest ones).
OPENAI_MAX_HISTORY = int(_env_number("OPENAI_MAX_HISTORY", 50, cast=int))

#: Constructor keywords of the backend class (the demo's come from the settings above, per stream).
STREAM_BACKEND_OPTIONS: dict = {}
if STREAM_BACKEND == _BACKEND_ALIASES["openai"]:
    if not OPENAI_MODEL:
        raise ImproperlyConfigured("OPENAI_MODEL must be set when STREAM_BACKEND=openai.")
    STREAM_BACKEND_OPTIONS = {
        "base_url": OPENAI_BASE_URL,
        "api_key": OPENAI_API_KEY,
        "model": OPENAI_MODEL,
        "timeout": OPENAI_TIMEOUT,
        "connect_timeout": OPENAI_CONNECT_TIMEOUT,
        "max_tokens": OPENAI_MAX_TOKENS or None,
        "temperature": OPENAI_TEMPERATURE,
        "system_prompt": OPENAI_SYSTEM_PROMPT,
        "max_history": OPENAI_MAX_HISTORY,
    }

#: Route ``/ws/bare/``, the no-machinery baseline of bench/capacity.py. Never in production.
STREAM_BENCH_BARE = _env_bool("STREAM_BENCH_BARE", False)

# --- Logging ---------------------------------------------------------------------------------

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
#: ``plain`` (human-readable lines) or ``json`` (one object per line, for log shippers).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Every line carries the instance and, for lines about a stream, its id (streaming/log.py).
    "filters": {"context": {"()": "streaming.log.ContextFilter", "instance_id": INSTANCE_ID}},
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(instance_id)s %(stream_id)s] "
            "%(message)s"
        },
        "json": {"()": "streaming.log.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "streaming": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# --- Limits ----------------------------------------------------------------------------------

#: Largest inbound WebSocket frame (bytes); larger ones are answered with ``too_large``.
STREAM_MAX_FRAME_BYTES = int(_env_number("STREAM_MAX_FRAME_BYTES", 65536, cast=int, minimum=256))
#: Longest chat message text (characters).
STREAM_MAX_TEXT_CHARS = int(_env_number("STREAM_MAX_TEXT_CHARS", 8000, cast=int, minimum=1))
#: Chat messages one session may send per minute (across instances when REDIS_URL is set).
STREAM_MESSAGES_PER_MINUTE = int(_env_number("STREAM_MESSAGES_PER_MINUTE", 30, cast=int, minimum=1))
#: Replies one session may have running at once on one instance.
STREAM_MAX_STREAMS_PER_SESSION = int(
    _env_number("STREAM_MAX_STREAMS_PER_SESSION", 3, cast=int, minimum=1)
)
#: Chat WebSockets one session may hold open on one instance.
STREAM_MAX_CONNECTIONS_PER_SESSION = int(
    _env_number("STREAM_MAX_CONNECTIONS_PER_SESSION", 8, cast=int, minimum=1)
)
#: Outbound bytes a WebSocket may leave unread before it is dropped (0 disables; daphne only).
STREAM_MAX_SEND_BACKLOG_BYTES = int(
    _env_number("STREAM_MAX_SEND_BACKLOG_BYTES", 1024 * 1024, cast=int, minimum=0)
)

# --- Crashed instances -------------------------------------------------------------------------

#: Seconds between two reaper runs on each instance (jittered +-20%); 0 disables the periodic run.
STREAM_REAPER_SECONDS = _env_number("STREAM_REAPER_SECONDS", 15.0, minimum=0)
#: A ``streaming`` reply is reaped only when older than this, and only once the registry has
#: existed this long (a freshly restarted Redis is refilled by heartbeats first).
STREAM_REAPER_GRACE_SECONDS = _env_number(
    "STREAM_REAPER_GRACE_SECONDS",
    max(30.0, 2 * (STREAM_STALE_AFTER_SECONDS + STREAM_HEARTBEAT_SECONDS)),
    minimum=0,
)
#: Seconds a SIGTERM waits for running replies to save as ``interrupted`` before daphne exits.
STREAM_SHUTDOWN_GRACE_SECONDS = _env_number("STREAM_SHUTDOWN_GRACE_SECONDS", 5.0, minimum=0)
