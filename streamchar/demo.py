"""The demo behind ``make demo``: a shipped character says a shipped text with the 2-step student.

Loads the shipped model (``--model tiny``: video codec, orchestrator, the stage-2 2-step student and the
characters of ``checkpoints/tiny``), streams the text through a :class:`~streamchar.engine.session.StreamSession`
as ``streamchar generate`` does, writes ``OUT.mp4`` and a two-character dialogue beside it, and reports
how fast each streamed (real-time factor, time to first frame) and what the files hold, read back; a contact
sheet of both, ``OUT.png``, is the picture the README shows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from streamchar.config import StreamCharConfig

logger = logging.getLogger(__name__)
# said in words the evaluation recognizer's lexicon holds, so that `judge` can score what it hears
TEXT = "I painted a bright picture today. We drew a castle near the river, and then we cooked dinner in the kitchen."
DIALOGUE = (
    "A: Hi Ben, did you sleep well?\nB: Not really, the rain was loud all night.\nA: Oh no, I am sorry."
)


def run_demo(cfg: StreamCharConfig, out: str | Path = "out/demo.mp4") -> dict:
    """Write ``out`` (the monologue), ``OUT-dialogue.mp4``, ``OUT.png`` and ``OUT.json``; returns the summary."""
    from streamchar.data.preview import probe_streams
    from streamchar.engine.engine import Engine
    from streamchar.engine.render import parse_dialogue, render_dialogue, render_text

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
    results["contact_sheet"] = str(write_sheet(results, out.with_suffix(".png")))
    results["judged"] = judge(cfg, results["monologue"]["video"], ada, TEXT)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def write_sheet(results: dict, path: Path, monologue_frames: int = 8, dialogue_frames: int = 4) -> Path:
    """The demo's contact sheet, read back from its mp4s: frames evenly spaced through the monologue (four
    to a row), then through the dialogue (two to a row), each captioned with its time in the clip."""
    from PIL import Image

    from streamchar.media import contact_sheet, read_video

    parts = []
    for name, count, columns in (("monologue", monologue_frames, 4), ("dialogue", dialogue_frames, 2)):
        frames, fps, _, _ = read_video(results[name]["video"])  # [T, H, W, 3]
        picked = np.linspace(0, len(frames) - 1, count).round().astype(int)
        captions = [f"{name} {index / fps:.1f} s" for index in picked]
        parts.append(contact_sheet(list(frames[picked]), columns, captions))
    width = max(part.shape[1] for part in parts)
    parts = [np.pad(part, ((0, 0), (0, width - part.shape[1]), (0, 0)), constant_values=20) for part in parts]
    Image.fromarray(np.concatenate(parts)).save(path, optimize=True)
    return path


def judge(cfg: StreamCharConfig, video: str | Path, character, text: str,
          instruments: str | Path = "checkpoints/eval") -> dict | None:  # fmt: skip
    """What the evaluation instruments hear and see in a written clip: the recognizer's WER on its speech
    and on espeak's own rendering of the same text in the character's corpus voice (the ceiling), and the
    sync expert's audio-video offset (0 is in sync), read back from the mp4. None without instruments."""
    from streamchar.config import resolve_asset_path
    from streamchar.data.characters import sample_identity
    from streamchar.data.espeak import get_espeak
    from streamchar.eval.metrics.error_rates import edit_distance, normalise_words
    from streamchar.eval.protocols.measure import Instruments, measure
    from streamchar.media import read_video, resample

    root = resolve_asset_path(instruments)
    if not (root / "recognizer" / "config.json").is_file():
        logger.warning("no evaluation instruments in %s; the demo is not judged", root)
        return None
    inst = Instruments.load(root)
    rate = cfg.timeline.sample_rate
    frames, _, audio, _ = read_video(video, rate)
    row = measure(inst, frames, audio, text, character.image, character.voice, None)
    judged = {"wer": row["word_edits"] / row["words"], "heard": row["transcript"],
              "sync_offset_frames": row.get("sync_offset"), "sync_c": row.get("sync_c")}  # fmt: skip
    record = resolve_asset_path(cfg.engine.characters_dir) / character.name / "character.json"
    if record.is_file() and "char_id" in (info := json.loads(record.read_text())):
        synth = cfg.data.synth
        voice = sample_identity(synth.seed, int(info["char_id"]), synth.styles).voice
        speech = get_espeak().synthesize(text, voice)
        heard = inst.recognizer.words(resample(speech.samples, speech.sample_rate, rate))
        judged["wer_espeak"] = edit_distance(normalise_words(text), heard) / len(normalise_words(text))
    return judged


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
    if judged := results.get("judged"):
        espeak = (
            f" (on espeak's own audio of the text: {judged['wer_espeak']:.0%})"
            if "wer_espeak" in judged
            else ""
        )
        lines.append(f"the evaluation recognizer hears \"{judged['heard']}\": WER {judged['wer']:.0%}{espeak}; "
                     f"the sync expert finds audio and video {judged['sync_offset_frames']} frames apart")  # fmt: skip
    if "contact_sheet" in results:
        lines.append(f"contact sheet: {results['contact_sheet']}")
    lines.append(f"details: {Path(results['monologue']['video']).with_suffix('.json')}")
    return "\n".join(lines)
