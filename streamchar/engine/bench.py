"""``streamchar bench stream``: live sessions measured side by side, one row per preset x steps x overlap.

Each run is a live (paced) session with the shipped character: a first sentence is pushed before the
session starts; once it has been spoken and the character listens, a second sentence is pushed
mid-session, and the run goes on until that one has been heard too (at least ``chunks`` chunks).
Recorded per run: time to first frame (first push -> first frame decoded), chunk latency p50/p95/p99
(planning -> frames decoded), real-time factor (the loop's busy time per media second), deadline misses
(chunks ready after their playback slot), and text-to-speech latency (push -> the pushed text's first
audio playing) for the first and the mid-session sentence. Absolute times count only on a GPU; on a
CPU the ratios between rows are the result.
"""

from __future__ import annotations

import logging
import platform
import time

import torch
from tqdm import tqdm

from streamchar.engine.session import Engine

logger = logging.getLogger(__name__)
FIRST = "Hello there, it is good to see you again."
SECOND = "Tell me what you would like to talk about today."


def run_once(engine: Engine, steps: int, overlap: bool, chunks: int, max_chunks: int | None = None) -> dict:
    max_chunks = max_chunks or 4 * chunks
    session = engine.session([engine.character()], steps=steps, realtime=True, decode_overlap=overlap)
    second_pushed = None
    try:
        session.push_text(FIRST, final=True)
        for chunk in session:
            spoken_first = session.speech_end is not None and chunk.listening
            if second_pushed is None and spoken_first:
                session.push_text(SECOND, final=True)
                second_pushed = chunk.index
            heard = len(session.stats.tts_latency) >= 2
            if (chunk.index + 1 >= chunks and heard) or chunk.index + 1 >= max_chunks:
                break
        stats = session.stats
        latencies = list(stats.tts_latency)
        summary = stats.summary()
        return {
            "steps": steps, "overlap": overlap, "chunks": stats.chunks,
            "time_to_first_frame_s": summary["time_to_first_frame_s"],
            "chunk_latency_s": summary["chunk_latency_s"],
            "real_time_factor": summary["real_time_factor"],
            "deadline_misses": stats.deadline_misses,
            "stalled_s": round(session.clock.stalled, 3),
            "tts_first_s": round(latencies[0], 4) if latencies else None,
            "tts_mid_session_s": round(latencies[1], 4) if len(latencies) > 1 else None,
            "mid_session_push_after_chunk": second_pushed,
        }  # fmt: skip
    finally:
        session.close()


def bench_stream(cfg, steps=(1, 2, 4, 32), chunks: int = 16, overlap: str = "both", presets=None) -> dict:
    from streamchar.config import load_config

    modes = {"both": (True, False), "on": (True,), "off": (False,)}[overlap]
    rows = []
    for preset in presets or [None]:
        pcfg = cfg if preset is None else load_config(preset)
        engine = Engine.from_config(pcfg)
        warm = engine.session([engine.character()], steps=1)  # first-call costs out of the way
        warm.push_text("Hi.", final=True)
        for _ in warm:
            pass
        warm.close()
        for n in tqdm(steps, desc=f"bench {pcfg.preset}", unit="steps"):
            for on in modes:
                row = run_once(engine, n, on, chunks)
                rows.append({"preset": pcfg.preset} | row)
                logger.info("%s", rows[-1])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": engine.precision,
        "chunk_seconds": engine.timeline.chunk_seconds, "lookahead_chunks": pcfg.engine.lookahead_chunks,
        "guidance_branches": engine.sampler().guidance.num_branches,
        "date": time.strftime("%Y-%m-%d"), "rows": rows,
    }  # fmt: skip


def format_table(result: dict) -> str:
    head = (
        "preset",
        "steps",
        "overlap",
        "TTFF s",
        "chunk p50",
        "p95",
        "p99",
        "RTF",
        "misses",
        "TTS first",
        "TTS mid",
    )
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in result["rows"]:
        lat = r["chunk_latency_s"]
        cells = (r["preset"], r["steps"], "on" if r["overlap"] else "off", r["time_to_first_frame_s"], lat["p50"],
                 lat["p95"], lat["p99"], r["real_time_factor"], f"{r['deadline_misses']}/{r['chunks']}",
                 r["tts_first_s"], r["tts_mid_session_s"])  # fmt: skip
        lines.append(" | ".join(str(c) for c in cells))
    note = (f"device {result['device']}, {result['threads']} threads, {result['precision']}, chunk "
            f"{result['chunk_seconds']} s, {result['guidance_branches']} guidance branches, lookahead "
            f"{result['lookahead_chunks']}")  # fmt: skip
    return "\n".join(lines) + "\n" + note
