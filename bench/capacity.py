"""Benchmark 3: streams one instance carries at 10 chunks/s, against a bare consumer.

Two fresh, identically configured daphne instances: one serves N streams through the real chat
consumer, the other N streams through a consumer with no cancel machinery, database or registry
(``/ws/bare/``, streaming/bare.py), one after the other (never both at once, so they do not share
the two cores), each in a process of its own so neither inherits the other's heap. For each the
benchmark reports chunk lateness (how much later than the 100 ms cadence each chunk arrived after
the previous one: p50/p99) and throughput (chunks/s received), and the ratio.

    .venv/bin/python bench/capacity.py --mode batched --streams 1000
"""

from __future__ import annotations

import asyncio
import itertools
import time

from common import MODES, cluster, emit, open_streams, parser, percentile, sessions

DELAY = 0.1


async def measure(instance, owners, streams: int, path: str, window: float) -> dict:
    running = await open_streams(owners, [instance], streams, "cap", path=path, wave=100)
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


async def one_round(mode: str, streams: int, window: float) -> tuple[dict, dict]:
    env = {
        **MODES[mode],
        "STREAM_CHUNK_DELAY": str(DELAY),
        "DEMO_REPLY_WORDS": "100000",
        "STREAM_BENCH_BARE": "1",
    }
    with cluster(2, env) as c:
        owners = await sessions(c.instances[0], max(1, streams // 10))
        bare = await measure(c.instances[0], owners, streams, "/ws/bare/", window)
        chat = await measure(c.instances[1], owners, streams, "/ws/chat/", window)
    return chat, bare


async def run(mode: str, streams: int, window: float, rounds: int) -> dict:
    """Several rounds on fresh processes; the median round (by chat lateness p99) is reported."""
    results = [await one_round(mode, streams, window) for _ in range(rounds)]
    results.sort(key=lambda pair: pair[0]["lateness_p99_ms"])
    chat, bare = results[len(results) // 2]
    return {
        "benchmark": "capacity",
        "mode": mode,
        "streams": streams,
        "window_s": window,
        "rounds": rounds,
        "chat": chat,
        "bare": bare,
        "throughput_vs_bare": round(chat["chunks_per_s"] / bare["chunks_per_s"], 3),
        "chat_lateness_p99_ms_all_rounds": [r[0]["lateness_p99_ms"] for r in results],
        "bare_lateness_p99_ms_all_rounds": sorted(r[1]["lateness_p99_ms"] for r in results),
        "throughput_vs_bare_all_rounds": sorted(
            round(c["chunks_per_s"] / b["chunks_per_s"], 3) for c, b in results
        ),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    emit(asyncio.run(run(args.mode, args.streams, args.window, args.rounds)))


if __name__ == "__main__":
    main()
