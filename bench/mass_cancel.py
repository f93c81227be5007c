"""Benchmark 4: 1000 streams started at once, 10% cancelled cross-instance.

Streams are started together, half on each instance; once they all stream, a cancel for 10% of
them is sent to the *other* instance. Every cancelled stream must end ``cancelled`` and every other
stream must end ``completed``.

    .venv/bin/python bench/mass_cancel.py --mode batched --streams 1000
"""

from __future__ import annotations

import asyncio
import random

from common import MODES, cancel_via, cluster, emit, open_streams, parser, sessions


async def run(mode: str, streams: int, fraction: float, words: int) -> dict:
    env = {**MODES[mode], "STREAM_CHUNK_DELAY": "0.1", "DEMO_REPLY_WORDS": str(words)}
    with cluster(2, env) as c:
        a, b = c.instances
        owners = await sessions(a, max(1, streams // 10))
        running = await open_streams(owners, c.instances, streams, "mass")
        rng = random.Random(11)
        chosen = set(rng.sample(range(streams), int(streams * fraction)))
        # Group cancels by owner and target the instance the stream is NOT on.
        jobs = []
        for owner_index, owner in enumerate(owners):
            for target in (a, b):
                ids = [
                    running[i].message_id
                    for i in chosen
                    if i % len(owners) == owner_index and c.instances[i % 2] is not target
                ]
                if ids:
                    jobs.append(cancel_via(owner, target, ids))
        accepted = [frame for frames in await asyncio.gather(*jobs) for frame in frames]
        await asyncio.wait_for(
            asyncio.gather(*(s.done.wait() for s in running)), timeout=words * 0.1 * 4 + 60
        )
        cancelled_ok = sum(
            1
            for i in chosen
            if running[i].finished and running[i].finished["status"] == "cancelled"
        )
        others = [s for i, s in enumerate(running) if i not in chosen]
        completed_ok = sum(1 for s in others if s.finished and s.finished["status"] == "completed")
        await asyncio.gather(*(s.close() for s in running))
        return {
            "benchmark": "mass_cancel",
            "mode": mode,
            "streams": streams,
            "cancelled_requested": len(chosen),
            "cancel_delivered": sum(1 for f in accepted if f.get("delivered")),
            "cancel_errors": sum(1 for f in accepted if f.get("type") == "error"),
            "cancelled_ok_pct": round(100 * cancelled_ok / max(1, len(chosen)), 1),
            "completed_ok_pct": round(100 * completed_ok / max(1, len(others)), 1),
        }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--words", type=int, default=150)
    args = p.parse_args()
    emit(asyncio.run(run(args.mode, args.streams, args.fraction, args.words)))


if __name__ == "__main__":
    main()
