"""interrupt() mid-sentence in a live session: how soon does speech stop, and does later text speak again?

For each trial: push a long sentence, wait for its speech, interrupt after ``--after`` speaking chunks,
then count the chunks that still hold speech (planned before the interrupt, or after it), the time from
the interrupt to the first listening frame's playback, and whether a later push speaks again.

    .venv/bin/python bench/interrupt.py --trials 5 --out docs/results/interrupt.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

LONG = "This is a rather long sentence, and it goes on and on about the weather, the sea and the hills."


def trial(engine, after: int, steps: int, seed: int) -> dict:
    session = engine.session([engine.character()], steps=steps, realtime=True, seed=seed)
    try:
        session.push_text(LONG, final=True)
        spoken = 0
        while spoken < after:
            spoken += not session.next_chunk().listening
        cut = time.perf_counter()
        session.interrupt()
        later, first_silent_play = [], None
        for _ in range(4):
            chunk = session.next_chunk()
            planned_after = chunk.timing.started >= cut
            speaking_frames = int(chunk.conditions.speaking.sum())
            later.append({"planned_after_interrupt": planned_after, "speaking_frames": speaking_frames})
            if first_silent_play is None and speaking_frames == 0:
                first_silent_play = session.clock.wall_of(chunk.timing.media_start) - cut
        session.push_text("Now I speak again.", final=True)
        again = [not session.next_chunk().listening for _ in range(6)]
        return {
            "chunks_after": later,
            "speech_chunks_planned_after_interrupt": sum(
                c["speaking_frames"] > 0 and c["planned_after_interrupt"] for c in later
            ),
            "speech_chunks_after_interrupt": sum(c["speaking_frames"] > 0 for c in later),
            "interrupt_to_listening_playback_s": round(first_silent_play, 3) if first_silent_play is not None else None,
            "speaks_again": any(again),
        }  # fmt: skip
    finally:
        session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--after", type=int, default=2, help="speaking chunks before the interrupt")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the result as JSON")
    parser.add_argument("--config", default="tiny")
    args = parser.parse_args()

    from streamchar.config import load_config
    from streamchar.engine.engine import Engine

    cfg = load_config(args.config)
    engine = Engine.from_config(cfg)
    trials = [trial(engine, args.after, args.steps, seed) for seed in range(args.trials)]
    delays = [
        t["interrupt_to_listening_playback_s"]
        for t in trials
        if t["interrupt_to_listening_playback_s"] is not None
    ]
    result = {
        "steps": args.steps, "lookahead_chunks": cfg.engine.lookahead_chunks, "chunk_seconds": engine.timeline.chunk_seconds,
        "trials": len(trials),
        "max_speech_chunks_after_interrupt": max(t["speech_chunks_after_interrupt"] for t in trials),
        "max_speech_chunks_planned_after_interrupt": max(t["speech_chunks_planned_after_interrupt"] for t in trials),
        "interrupt_to_listening_playback_s": {"median": float(np.median(delays)), "max": max(delays)} if delays else None,
        "speaks_again": all(t["speaks_again"] for t in trials),
        "per_trial": trials,
    }  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_trial"}, indent=1))


if __name__ == "__main__":
    main()
