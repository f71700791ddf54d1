"""The demo behind ``make demo``.

Until a trained model ships, the demo synthesises a small corpus of a few characters (monologues
in every style and a two-character dialogue) and writes a preview video with sound, then reports
what the file holds as read back from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from streamchar.config import StreamCharConfig

logger = logging.getLogger(__name__)


def run_demo(cfg: StreamCharConfig, out: str | Path) -> dict:
    from streamchar.data.preview import probe_streams, write_preview
    from streamchar.data.synth import synth_corpus

    out = Path(out)
    synth = cfg.data.synth
    synth.num_characters = 6
    synth.clips_per_character = 1
    synth.dialogue_fraction = 0.34
    synth.listening_fraction = 0.0
    synth.heldout_identity_fraction = 0.0
    synth.clips_per_shard = 2
    t0 = time.perf_counter()
    corpus = synth_corpus(cfg, out / "corpus")
    preview = write_preview(out / "corpus", out, clips=6)
    streams = probe_streams(preview["video"])
    durations = [s["duration"] for s in streams if s["duration"] is not None]
    result = {
        "video": preview["video"],
        "contact_sheet": preview["contact_sheet"],
        "corpus": str(out / "corpus"),
        "clips": corpus["clips"],
        "streams": streams,
        "audio_video_duration_difference_s": round(max(durations) - min(durations), 4) if durations else None,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    logger.info("demo video written to %s", preview["video"])
    return result
