"""The demo behind ``make demo``: a shipped character says a shipped text with the 2-step student.

Loads the shipped model (``--model tiny``: video codec, orchestrator, the stage-2 2-step student and the
characters of ``checkpoints/tiny``), streams the text through a :class:`~streamchar.engine.session.StreamSession`
as ``streamchar generate`` does, writes ``OUT.mp4`` and a two-character dialogue beside it, and reports
how fast each streamed (real-time factor, time to first frame) and what the files hold, read back.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from streamchar.config import StreamCharConfig

logger = logging.getLogger(__name__)
TEXT = "Hello! I am Ada. I was made from a picture and a few seconds of a voice, and I speak as you type."
DIALOGUE = (
    "A: Hi Ben, did you sleep well?\nB: Not really, the rain was loud all night.\nA: Oh no, I am sorry."
)


def run_demo(cfg: StreamCharConfig, out: str | Path = "out/demo.mp4") -> dict:
    """Write ``out`` (the monologue), ``OUT-dialogue.mp4`` and ``OUT.json``; returns the summary."""
    from streamchar.data.preview import probe_streams
    from streamchar.engine.render import parse_dialogue, render_dialogue, render_text
    from streamchar.engine.session import Engine

    out = Path(out)
    if out.suffix != ".mp4":
        raise ValueError(f"--out {out} must name an .mp4 file, for example out/demo.mp4.")
    t0 = time.perf_counter()
    engine = Engine.from_config(cfg)
    ada = engine.character("ada")
    results = {
        "denoiser": cfg.engine.denoiser_path,
        "monologue": render_text(engine, ada, TEXT, out) | {"text": TEXT},
    }
    pair = [ada, engine.character("ben")]
    dialogue = out.with_name(out.stem + "-dialogue.mp4")
    results["dialogue"] = render_dialogue(engine, pair, parse_dialogue(DIALOGUE), dialogue)
    for name in ("monologue", "dialogue"):
        result = results[name]
        streams = probe_streams(result["video"])
        durations = [s["duration"] for s in streams if s["duration"] is not None]
        result["streams"] = streams
        result["audio_video_duration_difference_s"] = round(max(durations) - min(durations), 4)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def describe(results: dict) -> str:
    """The lines ``make demo`` prints: where the files are and how fast they streamed."""
    lines = []
    for name in ("monologue", "dialogue"):
        r = results[name]
        stats = r["stats"]
        rtf = stats["real_time_factor"]
        lines.append(
            f"{name}: {r['video']} ({r['seconds']:.1f} s, {' and '.join(r['characters'])}, {r['steps']} steps of "
            f"{Path(results['denoiser']).name}) streamed at real-time factor {rtf:.2f} "
            f"({1 / rtf:.1f}x faster than playback), first frame after {stats['time_to_first_frame_s']:.2f} s, "
            f"{stats['deadline_misses']} deadline misses"
        )
    lines.append(f"details: {Path(results['monologue']['video']).with_suffix('.json')}")
    return "\n".join(lines)
