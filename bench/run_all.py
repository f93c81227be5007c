"""Run the four benchmarks for both cancel modes and write docs/benchmarks.json.

.venv/bin/python bench/run_all.py            # full sizes (about 10 minutes)
.venv/bin/python bench/run_all.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "benchmarks.json"


def commands(quick: bool) -> list[list[str]]:
    s100, s1000, trials = ("20", "100", "20") if quick else ("100", "1000", "200")
    runs = []
    for mode in ("batched", "poll"):
        runs += [
            ["cancel_latency.py", "--mode", mode, "--streams", s100, "--trials", trials],
            ["redis_load.py", "--mode", mode, "--streams", s100],
            ["redis_load.py", "--mode", mode, "--streams", s1000],
            ["capacity.py", "--mode", mode, "--streams", s1000],
            ["mass_cancel.py", "--mode", mode, "--streams", s1000],
        ]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="run only scripts whose name contains this")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() and args.only else []
    for command in commands(args.quick):
        if args.only and args.only not in command[0]:
            continue
        print("$ bench/" + " ".join(command), file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, str(HERE / command[0]), *command[1:]],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            result = {"command": command, "error": done.stderr.strip().splitlines()[-1:]}
        else:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        result["command"] = "bench/" + " ".join(command)
        results = [r for r in results if r.get("command") != result["command"]] + [result]
        print(json.dumps(result), flush=True)
        OUT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
