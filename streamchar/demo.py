"""The demo behind ``make demo``: the shipped tiny character speaks, then two characters talk.

Renders with the shipped checkpoints (``checkpoints/tiny``: video codec, teacher, orchestrator,
characters) through a :class:`~streamchar.engine.session.StreamSession`, as ``streamchar generate``
does, and reports what each file holds as read back from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from streamchar.config import StreamCharConfig

logger = logging.getLogger(__name__)
TEXT = "Hello! I am Ada. I was made from a picture and a few seconds of a voice, and I speak as you type."
DIALOGUE = (
    "A: Hi Ben, did you sleep well?\nB: Not really, the rain was loud all night.\nA: Oh no, I am sorry."
)


def run_demo(cfg: StreamCharConfig, out: str | Path) -> dict:
    from streamchar.data.preview import probe_streams
    from streamchar.engine.render import parse_dialogue, render_dialogue, render_text
    from streamchar.engine.session import Engine

    out = Path(out)
    t0 = time.perf_counter()
    engine = Engine.from_config(cfg)
    results = {}
    ada = engine.character("ada")
    results["monologue"] = render_text(engine, ada, TEXT, out / "ada.mp4")
    pair = [ada, engine.character("ben")]
    results["dialogue"] = render_dialogue(engine, pair, parse_dialogue(DIALOGUE), out / "dialogue.mp4")
    for name, result in results.items():
        streams = probe_streams(result["video"])
        durations = [s["duration"] for s in streams if s["duration"] is not None]
        result["streams"] = streams
        result["audio_video_duration_difference_s"] = round(max(durations) - min(durations), 4)
        result.pop("stats", None)
        logger.info("%s written to %s", name, result["video"])
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return results
