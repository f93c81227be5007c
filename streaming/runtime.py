"""Builds the configured cancel store and this loop's ``InstanceStreams`` from settings.

Components take explicit arguments; this is the one place that maps settings onto them. The built
objects are cached and dropped when a test changes a relevant setting.
"""

from __future__ import annotations

import functools

import redis.asyncio as aredis
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import metrics
from .cancellation import CancelStore, InMemoryCancelStore, RedisCancelStore
from .instance import CancelMode, InstanceStreams, get_instance_streams
from .limits import Limits, LocalWindowCounter, RedisWindowCounter


@functools.cache
def get_store() -> CancelStore:
    """The process-wide cancel store: Redis when ``REDIS_URL`` is set, else in-process."""
    common = {
        "flag_ttl": settings.STREAM_CANCEL_FLAG_TTL,
        "registry_ttl": settings.STREAM_REGISTRY_TTL,
        "stale_after": settings.STREAM_STALE_AFTER_SECONDS,
    }
    if settings.REDIS_URL and settings.STREAM_CANCEL_MODE == CancelMode.POLL:
        # The original design, kept for the benchmarks: redis-py's default (non-blocking) pool.
        url, timeout = settings.REDIS_URL, settings.STREAM_REDIS_TIMEOUT
        return RedisCancelStore(
            prefix=settings.STREAM_REDIS_PREFIX,
            timeout=timeout,
            async_client_factory=lambda: aredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            ),
            sync_client=None,
            url=url,
            **common,
        )
    if settings.REDIS_URL:
        return RedisCancelStore(
            url=settings.REDIS_URL,
            prefix=settings.STREAM_REDIS_PREFIX,
            timeout=settings.STREAM_REDIS_TIMEOUT,
            max_connections=settings.STREAM_REDIS_MAX_CONNECTIONS,
            **common,
        )
    return InMemoryCancelStore(**common)


def get_streams() -> InstanceStreams:
    """The running event loop's streams (one loop per daphne process)."""
    return get_instance_streams(
        lambda: InstanceStreams(
            store=get_store(),
            instance_id=settings.INSTANCE_ID,
            check_chunks=settings.STREAM_CANCEL_CHECK_CHUNKS,
            check_seconds=settings.STREAM_CANCEL_CHECK_SECONDS,
            heartbeat_seconds=settings.STREAM_HEARTBEAT_SECONDS,
            mode=CancelMode(settings.STREAM_CANCEL_MODE),
            on_check_error=metrics.redis_error,
            checkpoint=_checkpoint,
            checkpoint_seconds=settings.STREAM_CHECKPOINT_SECONDS,
        )
    )


def start_instance_services() -> None:
    """Start what lives as long as this instance's event loop, once: the cancel subscription, the
    reaper of dead instances' replies and the graceful-shutdown hook.

    Called on every WebSocket connect and by the active-streams API (an instance serving only HTTP
    reaps too); each piece is idempotent and cheap once running.
    """
    from .reaper import ensure_reaper
    from .shutdown import install_shutdown_hook

    get_streams().ensure_started()
    ensure_reaper(
        store=get_store(),
        interval=settings.STREAM_REAPER_SECONDS,
        grace_seconds=settings.STREAM_REAPER_GRACE_SECONDS,
    )
    install_shutdown_hook(grace_seconds=settings.STREAM_SHUTDOWN_GRACE_SECONDS)


async def _checkpoint(streams: list) -> None:
    from .services import checkpoint_streams  # services imports this module

    await checkpoint_streams(streams)


@functools.cache
def get_limits() -> Limits:
    """The process-wide per-session limits; counters in Redis when the store is Redis."""
    store = get_store()
    local = LocalWindowCounter()
    counter: LocalWindowCounter | RedisWindowCounter = local
    if isinstance(store, RedisCancelStore):
        counter = RedisWindowCounter(
            client=lambda: store.client,
            prefix=store.prefix,
            timeout=settings.STREAM_REDIS_TIMEOUT,
            fallback=local,
        )
    return Limits(
        messages_per_minute=settings.STREAM_MESSAGES_PER_MINUTE,
        max_streams=settings.STREAM_MAX_STREAMS_PER_SESSION,
        max_connections=settings.STREAM_MAX_CONNECTIONS_PER_SESSION,
        counter=counter,
    )


@receiver(setting_changed)
def _reset_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting in {"REDIS_URL", "INSTANCE_ID"} or setting.startswith("STREAM_"):
        get_store.cache_clear()
        get_limits.cache_clear()
        from . import instance

        instance._per_loop.clear()
