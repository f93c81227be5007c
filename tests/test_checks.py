"""System checks for dangerous configurations, and ``check --deploy`` for the production one."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.checks import check_streaming_configuration

ROOT = Path(__file__).resolve().parents[1]

PRODUCTION = {
    "DEBUG": "0",
    "ALLOWED_HOSTS": "chat.example.com",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "HTTPS": "1",
    "TRUST_X_FORWARDED_PROTO": "1",
}


def ids(settings_overrides: dict, settings) -> set[str]:
    for name, value in settings_overrides.items():
        setattr(settings, name, value)
    return {message.id for message in check_streaming_configuration()}


def production(settings) -> None:
    settings.DEBUG = False
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}


def test_production_settings_pass(settings):
    production(settings)
    assert ids({}, settings) == set()


def test_e001_no_redis_with_debug_off(settings):
    production(settings)
    assert "streaming.E001" in ids({"REDIS_URL": ""}, settings)


def test_e002_in_memory_layer_with_debug_off(settings):
    production(settings)
    layer = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert ids({"CHANNEL_LAYERS": layer}, settings) == {"streaming.E002"}


def test_e003_wildcard_allowed_hosts_with_debug_off(settings):
    production(settings)
    assert ids({"ALLOWED_HOSTS": ["chat.example.com", "*"]}, settings) == {"streaming.E003"}
    assert ids({"DEBUG": True}, settings) == set()  # A local trial may use '*'.


def test_w001_slow_cancel_checks(settings):
    production(settings)
    assert ids({"STREAM_CANCEL_CHECK_SECONDS": 3}, settings) == {"streaming.W001"}


def test_w002_short_flag_ttl(settings):
    production(settings)
    assert ids({"STREAM_CANCEL_FLAG_TTL": 30}, settings) == {"streaming.W002"}


def test_w003_reaper_grace_shorter_than_heartbeat_liveness(settings):
    production(settings)
    overrides = {
        "STREAM_HEARTBEAT_SECONDS": 2,
        "STREAM_STALE_AFTER_SECONDS": 6,
        "STREAM_REAPER_GRACE_SECONDS": 5,
    }
    assert ids(overrides, settings) == {"streaming.W003"}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION and k != "SECRET_KEY"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_check_deploy_is_clean_for_the_production_configuration():
    env = {**PRODUCTION, "SECRET_KEY": secrets.token_urlsafe(50)}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout + result.stderr
    # The same configuration without TLS is reported, not silently accepted.
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={**env, "HTTPS": "0"})
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


@pytest.mark.timeout(90)
def test_secret_key_is_required_when_debug_is_off():
    result = manage("check", env={**PRODUCTION})
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr
