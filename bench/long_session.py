"""A long session: does resident memory stay flat and do the per-session state sizes stay constant?

Runs one text session of the shipped character for ``--minutes`` of media (offline, as fast as the
machine goes), pushing a new sentence whenever the character falls silent and interrupting every
``--interrupt-every`` sentences. Every ``--every`` chunks it records the process's resident memory and
the session's state sizes (K/V cache, motion latents, orchestrator context); writes JSON and a plot.

    .venv/bin/python bench/long_session.py --minutes 30 --out docs/results/long_session
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

from tqdm import tqdm

SENTENCES = [
    "Good morning, I hope the weather is kind to you today.",
    "The little boat drifted past the harbour lights at dawn.",
    "Could you tell me the way to the old stone bridge?",
    "We measured the river twice and found it had risen by a foot.",
    "Seven quiet cats slept on the warm kitchen floor.",
    "Please remember to bring the maps and a spare lantern.",
]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="media minutes to generate")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps per chunk")
    parser.add_argument("--every", type=int, default=25, help="chunks between memory samples")
    parser.add_argument("--interrupt-every", type=int, default=7, help="interrupt every N-th sentence midway")
    parser.add_argument("--warmup-minutes", type=float, default=2.0, help="growth is measured after this")
    parser.add_argument("--out", default="docs/results/long_session", help="writes OUT.json and OUT.png")
    parser.add_argument("--config", default="tiny")
    args = parser.parse_args()

    from streamchar.config import load_config
    from streamchar.engine.engine import Engine

    cfg = load_config(args.config)
    engine = Engine.from_config(cfg)
    session = engine.session([engine.character()], steps=args.steps, realtime=True, lookahead_chunks=10**6)
    # realtime=True keeps the session open forever; a lookahead this large never waits for playback
    total = int(args.minutes * 60 / engine.timeline.chunk_seconds)
    samples, pushed, interrupted = [], 0, 0
    start = time.perf_counter()
    session.push_text(SENTENCES[0], final=True)
    speaking_since = None
    try:
        for chunk in tqdm(session, total=total, unit="chunk", mininterval=5):
            if chunk.listening and session.orchestrator.idle:
                pushed += 1
                session.push_text(SENTENCES[pushed % len(SENTENCES)], final=True)
                speaking_since = chunk.index
            elif (speaking_since is not None and chunk.index - speaking_since == 3
                  and pushed % args.interrupt_every == 0):  # fmt: skip
                session.interrupt()
                interrupted += 1
                speaking_since = None
            if chunk.index % args.every == 0:
                gc.collect()
                samples.append({"chunk": chunk.index, "media_minutes": round(chunk.timing.media_start / 60, 3),
                                "rss_mib": round(rss_mib(), 2), "state_bytes": session.state_nbytes()})  # fmt: skip
            if chunk.index + 1 >= total:
                break
        stats = session.stats.summary()
        # this run keeps no playback pace (it races ahead), so push-to-playback latencies mean nothing here
        stats.pop("text_to_speech_latency_s")
    finally:
        session.close()
    warm = [s for s in samples if s["media_minutes"] >= args.warmup_minutes]
    growth = warm[-1]["rss_mib"] - warm[0]["rss_mib"] if len(warm) > 1 else None
    kv = sorted({s["state_bytes"]["kv_cache"] for s in samples[1:]})
    motion = sorted({s["state_bytes"]["motion_latents"] for s in samples[1:]})
    context = [s["state_bytes"]["orchestrator_context"] for s in samples]
    result = {
        "media_minutes": round(total * engine.timeline.chunk_seconds / 60, 2), "chunks": total,
        "steps": args.steps, "wall_minutes": round((time.perf_counter() - start) / 60, 2),
        "sentences_pushed": pushed + 1, "interrupts": interrupted,
        "rss_mib_after_warmup": warm[0]["rss_mib"] if warm else None,
        "rss_mib_end": samples[-1]["rss_mib"] if samples else None,
        "rss_growth_after_warmup_mib": round(growth, 2) if growth is not None else None,
        "kv_cache_bytes_distinct_values": kv, "motion_latents_bytes_distinct_values": motion,
        "orchestrator_context_tokens_max": max(context) if context else None,
        "stats": stats, "samples": samples,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(samples, out.with_suffix(".png"), args.warmup_minutes)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


def _plot(samples, path: Path, warmup: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([s["media_minutes"] for s in samples], [s["rss_mib"] for s in samples])
    ax.axvline(warmup, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("media minutes")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("Long session: resident memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
