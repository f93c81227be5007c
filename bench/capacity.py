"""Benchmark 3: streams one instance carries at 10 chunks/s, against a bare consumer.

One daphne instance serves both the real chat consumer and, at ``/ws/bare/``, a consumer with no
cancel machinery, database or registry (streaming/bare.py). The same N streams run on each in
turn; for each the benchmark reports chunk lateness (how much later than the 100 ms cadence each
chunk arrived after the previous one: p50/p99) and throughput (chunks/s received), and the ratio.

    .venv/bin/python bench/capacity.py --mode batched --streams 1000
"""

from __future__ import annotations

import asyncio
import itertools
import time

from common import MODES, Stream, cluster, emit, parser, percentile, sessions

DELAY = 0.1


async def measure(c, owners, streams: int, path: str, window: float) -> dict:
    instance = c.instances[0]
    running: list[Stream] = []
    for start in range(0, streams, 100):
        batch = range(start, min(streams, start + 100))
        running += await asyncio.gather(
            *(Stream.open(owners[i % len(owners)], instance, f"cap {i}", path) for i in batch)
        )
    await asyncio.gather(*(s.first_chunk.wait() for s in running))
    await asyncio.sleep(2)
    counts = [len(s.chunk_times) for s in running]
    t0 = time.monotonic()
    await asyncio.sleep(window)
    t1 = time.monotonic()
    received = 0
    lateness: list[float] = []
    for stream, start_count in zip(running, counts, strict=True):
        times = [t for t in stream.chunk_times[start_count:] if t <= t1]
        received += len(times)
        lateness += [max(0.0, (b - a) - DELAY) for a, b in itertools.pairwise(times)]
    await asyncio.gather(*(s.close() for s in running))
    await asyncio.sleep(2)  # Let the server wind the streams down before the next run.
    return {
        "chunks_per_s": round(received / (t1 - t0), 1),
        "ideal_chunks_per_s": round(streams / DELAY, 1),
        "lateness_p50_ms": round(percentile(lateness, 50) * 1000, 1),
        "lateness_p99_ms": round(percentile(lateness, 99) * 1000, 1),
    }


async def run(mode: str, streams: int, window: float) -> dict:
    env = {
        **MODES[mode],
        "STREAM_CHUNK_DELAY": str(DELAY),
        "DEMO_REPLY_WORDS": "100000",
        "STREAM_BENCH_BARE": "1",
    }
    with cluster(1, env) as c:
        owners = await sessions(c.instances[0], max(1, streams // 10))
        bare = await measure(c, owners, streams, "/ws/bare/", window)
        chat = await measure(c, owners, streams, "/ws/chat/", window)
    return {
        "benchmark": "capacity",
        "mode": mode,
        "streams": streams,
        "window_s": window,
        "chat": chat,
        "bare": bare,
        "throughput_vs_bare": round(chat["chunks_per_s"] / bare["chunks_per_s"], 3),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--window", type=float, default=10.0)
    args = p.parse_args()
    emit(asyncio.run(run(args.mode, args.streams, args.window)))


if __name__ == "__main__":
    main()
