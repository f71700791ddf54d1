"""Does splitting the cores between a session's two threads pay? ``engine.worker_threads`` side by side.

A session denoises chunk *i + 1* on its loop thread while its decode worker decodes chunk *i*; each runs
torch ops with its own intra-op threads. This bench builds the shipped model once and runs the same offline
sessions (three sentences, the same seed) with each setting in turn, alternating, so every setting sees the
machine's drift alike, and prints each setting's real-time factor (the loop's busy seconds per media second)
and its deadline misses (none can occur offline; printed for the record).

    .venv/bin/python bench/worker_threads.py [--model tiny] [--threads 0 2 ...] [--rounds 2] [key=value ...]

``0`` is the engine's default (auto: half the builder's threads each on a CPU with decode overlap); any
other number is that many threads for the loop and for the decode worker each.
"""

from __future__ import annotations

import argparse
import json

TEXTS = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the green hills beyond the river.",
    "I painted a bright picture today. We drew a castle near the river, and then we cooked dinner in the kitchen.",
    "She sells sea shells by the sea shore, and the shells she sells are surely from the shore.",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="shipped model name or model folder")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="settings of engine.worker_threads to compare (default: 0 and the builder's threads)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="times each setting runs the three sentences")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()

    from streamchar.config import load_config, model_overrides
    from streamchar.engine.engine import Engine

    preset, parts = model_overrides(args.model)
    engine = Engine.from_config(load_config(preset, parts + args.overrides))
    settings = args.threads or [0, engine.threads]
    totals = {n: {"busy": 0.0, "media": 0.0, "misses": 0} for n in settings}
    for _ in range(args.rounds):
        for n in settings:
            engine.cfg.engine.worker_threads = n
            totals[n]["each"] = engine.worker_threads(True)
            for text in TEXTS:
                with engine.session(seed=1) as session:
                    session.push_text(text, final=True)
                    chunks = list(session)
                    totals[n]["busy"] += session.stats.busy_seconds
                    totals[n]["media"] += sum(c.timing.duration for c in chunks)
                    totals[n]["misses"] += session.stats.deadline_misses
    rows = []
    for n, t in totals.items():
        rows.append({"worker_threads": n, "threads_each": t["each"], "real_time_factor": round(t["busy"] / t["media"], 4),
                     "media_s": round(t["media"], 1), "deadline_misses": t["misses"]})  # fmt: skip
    base = rows[-1]["real_time_factor"]
    print(
        f"builder's intra-op threads: {engine.threads}; {args.rounds} round(s) of {len(TEXTS)} sentences each"
    )
    for row in rows:
        print(f"worker_threads={row['worker_threads']} ({row['threads_each']} each): RTF {row['real_time_factor']:.3f} "
              f"over {row['media_s']} s, x{row['real_time_factor'] / base:.2f} of the last row")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps({"threads": engine.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
