"""Benchmark 2: Redis commands per second with N concurrent streams over two instances.

N streams of 10 chunks/s are spread evenly over two instances; once all are streaming, the
benchmark reads ``total_commands_processed`` from Redis ``INFO stats`` over a window and reports
commands per second for all instances together (its own two INFO calls subtracted).

    .venv/bin/python bench/redis_load.py --mode batched --streams 100
"""

from __future__ import annotations

import asyncio
import time

from common import MODES, cluster, emit, open_streams, parser, sessions


async def run(mode: str, streams: int, window: float) -> dict:
    env = {**MODES[mode], "STREAM_CHUNK_DELAY": "0.1", "DEMO_REPLY_WORDS": "100000"}
    with cluster(2, env) as c:
        owners = await sessions(c.instances[0], max(1, streams // 10))
        # Opened in waves, as users would arrive.
        running = await open_streams(owners, c.instances, streams, "load", wave=100)
        await asyncio.sleep(3)  # Let the registry and subscriptions settle.
        before, t0 = c.redis_commands(), time.monotonic()
        chunks_before = sum(len(s.chunk_times) for s in running)
        await asyncio.sleep(window)
        after, t1 = c.redis_commands(), time.monotonic()
        chunks_after = sum(len(s.chunk_times) for s in running)
        alive = sum(1 for s in running if not s.done.is_set())
        await asyncio.gather(*(s.close() for s in running))
        return {
            "benchmark": "redis_load",
            "mode": mode,
            "streams": streams,
            "streams_alive": alive,
            "window_s": round(t1 - t0, 2),
            "redis_commands_per_s": round((after - before - 1) / (t1 - t0), 1),
            "chunks_per_s": round((chunks_after - chunks_before) / (t1 - t0), 1),
        }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--window", type=float, default=10.0)
    args = p.parse_args()
    emit(asyncio.run(run(args.mode, args.streams, args.window)))


if __name__ == "__main__":
    main()
