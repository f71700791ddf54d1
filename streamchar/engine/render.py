"""Offline renders to mp4 (``streamchar generate``): text, given speech, or a two-character dialogue.

Each runs a :class:`StreamSession` as fast as the machine allows and writes every chunk as it comes
(H.264 + AAC through :class:`~streamchar.media.Mp4Writer`); the file ends ``tail_seconds`` after the
speech, so its audio holds exactly the speech the orchestrator planned plus the listening tail.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamchar.engine.characters import Character
from streamchar.engine.chunk import Chunk
from streamchar.engine.engine import Engine
from streamchar.engine.session import StreamSession
from streamchar.media import Mp4Writer

logger = logging.getLogger(__name__)


class Mp4Sink:
    """Writes chunks to an mp4, holding back the newest one so the file can end mid-chunk."""

    def __init__(self, path: str | Path, timeline, metadata: dict[str, str] | None = None) -> None:
        self.tl = timeline
        self.writer = Mp4Writer(path, timeline.fps, timeline.sample_rate, metadata=metadata)
        self.frames = 0
        self._held: Chunk | None = None

    def write(self, chunk: Chunk) -> None:
        if self._held is not None:
            self._write(self._held.frames, self._held.audio)
        self._held = chunk

    def _write(self, frames: np.ndarray, audio: np.ndarray) -> None:
        self.writer.write_frames(frames)
        self.writer.write_audio(audio[: self.tl.video_frames_to_samples(len(frames))])
        self.frames += len(frames)

    def close(self, end_seconds: float | None = None) -> Path:
        """Finish the file, cut at ``end_seconds`` of media (within the last chunk) when given."""
        if self._held is not None:
            frames = len(self._held.frames)
            if end_seconds is not None:
                target = self.tl.seconds_to_video_frames(end_seconds)
                frames = int(np.clip(target - self.frames, 0, frames))
            if frames:
                self._write(self._held.frames[:frames], self._held.audio)
            self._held = None
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def _run(session: StreamSession, out: str | Path, metadata: dict[str, str], total_hint: float | None) -> dict:
    tl = session.tl
    sink = Mp4Sink(out, tl, metadata)
    start = time.perf_counter()
    bar = tqdm(total=round(total_hint, 1) if total_hint else None, unit="s", desc="generate",
               bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s media [{elapsed}<{remaining}]")  # fmt: skip
    try:
        for chunk in session:
            sink.write(chunk)
            bar.update(chunk.timing.duration)
        bar.total = bar.n  # the total was an estimate from the word count
        bar.refresh()
        end = (session.speech_end or 0.0) + session.tail_seconds
        path = sink.close(end)
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
        session.close()
    return {
        "video": str(path),
        "seconds": round(sink.frames / tl.fps, 3),
        "frames": sink.frames,
        "speech_seconds": round(session.speech_end or 0.0, 3),
        "tail_seconds": session.tail_seconds,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "steps": session.sampler.steps,
        "stats": session.stats.summary(),
    }


def _describe(characters: list[Character]) -> dict:
    return {"characters": [c.name for c in characters], "voices": [c.voice_name for c in characters]}


def render_text(engine: Engine, character: Character, text: str, out: str | Path, **session_kwargs) -> dict:
    """``character`` says ``text``; writes ``out`` (mp4)."""
    if not text.strip():
        raise ValueError("The text is empty; give the character something to say with --text or --text-file.")
    session = engine.session([character], **session_kwargs)
    try:
        session.push_text(text, final=True)
    except BaseException:
        session.close()
        raise
    words = len(text.split())
    meta = {"comment": f"StreamChar: character {character.name}, voice {character.voice_name}"}
    return _describe([character]) | _run(session, out, meta, total_hint=words / 2.5 + session.tail_seconds)


def render_audio(
    engine: Engine, character: Character, speech: np.ndarray, out: str | Path, **session_kwargs
) -> dict:
    """``character`` lip-syncs the given ``speech`` (mono float32 at the timeline's rate)."""
    tl = engine.timeline
    if len(speech) < tl.samples_per_audio_token:
        raise ValueError(
            f"The audio is {len(speech) / tl.sample_rate:.3f} s long; give at least "
            f"{tl.samples_per_audio_token / tl.sample_rate:.2f} s of speech."
        )
    session = engine.session([character], mode="audio", **session_kwargs)
    session.push_audio(speech, final=True)
    meta = {"comment": f"StreamChar: character {character.name}, driven by given audio"}
    summary = _run(session, out, meta, total_hint=len(speech) / tl.sample_rate + session.tail_seconds)
    return _describe([character]) | summary | {"voices": ["given audio"]}


@dataclass(frozen=True)
class Line:
    speaker: int
    text: str


def parse_dialogue(script: str) -> list[Line]:
    """A dialogue script: one turn per line, ``A: text`` or ``B: text`` (also ``1:``/``2:`` or the
    characters' names given as ``NAME:``); blank lines and lines starting with ``#`` are skipped."""
    lines, names = [], {}
    for number, raw in enumerate(script.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([^:]{1,40}):\s*(.*)$", line)
        if not match or not match.group(2).strip():
            raise ValueError(
                f"Dialogue line {number} ({line[:40]!r}) is not 'SPEAKER: text'; write A: or B: first."
            )
        who = match.group(1).strip().upper()
        if who in ("A", "1"):
            speaker = 0
        elif who in ("B", "2"):
            speaker = 1
        else:
            speaker = names.setdefault(who, len(names))
            if speaker > 1:
                raise ValueError(
                    f"Dialogue line {number} brings a third speaker ({who}); a dialogue has two."
                )
        lines.append(Line(speaker, match.group(2).strip()))
    if not lines:
        raise ValueError(
            "The dialogue script has no lines; write one turn per line as 'A: text' or 'B: text'."
        )
    return lines


def render_dialogue(engine: Engine, characters: list[Character], lines: list[Line], out: str | Path,
                    **session_kwargs) -> dict:  # fmt: skip
    """Two characters side by side take turns; the listener idles, nods and blinks."""
    if len(characters) != 2:
        raise ValueError(f"A dialogue needs two characters, got {len(characters)}.")
    session = engine.session(characters, **session_kwargs)
    try:
        for line in lines:
            session.push_text(line.text, final=True, speaker=line.speaker)
    except BaseException:
        session.close()
        raise
    words = sum(len(line.text.split()) for line in lines)
    meta = {"comment": f"StreamChar dialogue: {characters[0].name} and {characters[1].name}"}
    summary = _run(session, out, meta, total_hint=words / 2.5 + session.tail_seconds)
    return _describe(characters) | summary | {"turns": len(lines)}
