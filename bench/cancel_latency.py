"""Benchmark 1: cross-instance cancel latency at N concurrent streams.

Streams run on instance A (N of them, 10 chunks/s); each trial sends a cancel for one of them to
instance B and measures the time until A's socket receives ``stream.finished``; a new stream then
replaces the cancelled one so N stay concurrent.

    .venv/bin/python bench/cancel_latency.py --mode batched --streams 100 --trials 200
"""

from __future__ import annotations

import asyncio
import random
import time

from common import MODES, Stream, cluster, emit, open_streams, parser, sessions, summary_ms


async def run(mode: str, streams: int, trials: int) -> dict:
    env = {**MODES[mode], "STREAM_CHUNK_DELAY": "0.1", "DEMO_REPLY_WORDS": "100000"}
    with cluster(2, env) as c:
        a, b = c.instances
        owners = await sessions(a, max(1, streams // 10))
        running = await open_streams(owners, [a], streams, "latency")
        await asyncio.sleep(1)
        rng = random.Random(7)
        latencies: list[float] = []
        failures = 0
        canceller_sockets = {}
        for trial in range(trials):
            index = rng.randrange(len(running))
            victim = running[index]
            owner = owners[index % len(owners)]
            socket = canceller_sockets.get(id(owner))
            if socket is None:
                socket = canceller_sockets[id(owner)] = await owner.socket(b)
            sent = time.monotonic()
            await socket.send({"type": "stream.cancel", "message_id": victim.message_id})
            try:
                await asyncio.wait_for(victim.done.wait(), 10)
            except TimeoutError:
                failures += 1
            else:
                if victim.finished and victim.finished["status"] == "cancelled":
                    latencies.append(victim.finished_at - sent)
                else:
                    failures += 1
            accepted = await socket.receive(timeout=10)
            assert accepted["type"] == "cancel.accepted", accepted
            await victim.close()
            running[index] = await Stream.open(owner, a, f"latency replacement {trial}")
            await asyncio.sleep(0.02)
        for socket in canceller_sockets.values():
            await socket.close()
        await asyncio.gather(*(s.close() for s in running))
        return {
            "benchmark": "cancel_latency",
            "mode": mode,
            "streams": streams,
            "trials": trials,
            "failures": failures,
            **summary_ms(latencies),
        }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--trials", type=int, default=200)
    args = p.parse_args()
    emit(asyncio.run(run(args.mode, args.streams, args.trials)))


if __name__ == "__main__":
    main()
