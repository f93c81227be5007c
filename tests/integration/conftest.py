"""A cluster of real processes: a private redis-server and daphne instances on one database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.cluster import DaphneInstance, migrate, sqlite_url
from tests.redis_server import RedisServer


@dataclass
class Cluster:
    redis: RedisServer
    a: DaphneInstance
    b: DaphneInstance
    database_url: str = ""
    instances: list[DaphneInstance] = field(default_factory=list)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    """Start redis-server and two daphne instances with the given extra environment."""
    started: list[Cluster] = []

    def make(**env: str) -> Cluster:
        redis = RedisServer().start()
        database = sqlite_url()
        migrate(database)
        base = {
            "REDIS_URL": redis.url,
            "DATABASE_URL": database,
            "STREAM_HEARTBEAT_SECONDS": "0.5",
            "STREAM_REDIS_TIMEOUT": "0.3",
            **env,
        }
        a = DaphneInstance("instance-a", base)
        b = DaphneInstance("instance-b", base)
        cluster = Cluster(redis, a, b, database, [a, b])
        started.append(cluster)
        a.start()
        b.start()
        return cluster

    yield make
    logs = []
    for cluster in started:
        for instance in cluster.instances:
            instance.stop()
            logs.append(instance.log())
        cluster.redis.stop()
    for log in logs:
        assert "Traceback" not in log, log
