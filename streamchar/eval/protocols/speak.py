"""How a protocol makes a checkpoint speak: the ``--ckpt`` spec (row name, steps, ablation switches, driver),
the engine built for it, and offline engine sessions that collect what it generated chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamchar.timeline import Timeline


@dataclass
class Generated:
    frames: list[np.ndarray] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    phonemes: list[np.ndarray] = field(default_factory=list)  # planned phoneme id per video frame
    words: list[np.ndarray] = field(default_factory=list)  # session word index per video frame (-1: none)
    latencies: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def add(self, chunk, session) -> None:
        self.frames.append(chunk.frames)
        self.audio.append(chunk.audio)
        self.latencies.append(chunk.timing.latency)
        n = len(chunk.frames)
        tl = session.tl
        tokens = np.minimum(tl.video_frames_to_audio_tokens(np.arange(n)), tl.chunk_audio_tokens - 1)
        plan = chunk.conditions
        if plan is None:
            self.phonemes.append(np.zeros(n, np.int64))
            self.words.append(np.full(n, -1))
            return
        vocab = session.orchestrator.vocab
        units = plan.units.numpy()[tokens]
        self.phonemes.append(np.array([vocab.unit_phoneme(int(u)) for u in units]))
        self.words.append(plan.word.numpy()[tokens] if plan.word is not None else np.full(n, -1))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self.frames), np.concatenate(self.audio), np.concatenate(self.phonemes),
                np.concatenate(self.words))  # fmt: skip


def speak(engine, character, texts: list[str], steps: int | None, seed: int = 0, max_seconds: float | None = None,
          keep_ahead_words: int = 30) -> tuple[Generated, list[str]]:  # fmt: skip
    """Speak ``texts`` (one turn each) through an offline engine session; returns what was generated and the
    session's words in push order. Turns are pushed as the pointer nears the end of the text pushed so far,
    so a long session never holds its whole script; with ``max_seconds`` the session stops there."""
    from streamchar.eval.metrics.error_rates import normalise_words

    out = Generated()
    session = engine.session([character], mode="text", steps=steps, realtime=False, seed=seed)
    words: list[str] = []
    queue = list(texts)

    def push_next() -> None:
        text = queue.pop(0)
        with session._lock:  # the producer finishes turns under this lock: the count cannot move meanwhile
            before = session.orchestrator.words_pushed
            session.push_text(text, final=True)
            added = session.orchestrator.words_pushed - before
        tokens = [" ".join(normalise_words(t)) for t in text.split()]
        words.extend((tokens + [""] * added)[:added])

    try:
        push_next()
        media, spoken = 0.0, -1
        for chunk in session:
            out.add(chunk, session)
            media += chunk.timing.duration
            spoken = max(spoken, int(out.words[-1].max()))
            while queue and spoken >= len(words) - keep_ahead_words:
                push_next()
            if max_seconds is not None and media >= max_seconds:
                break
        out.stats = session.stats.summary()
    finally:
        session.close()
    return out, words


def speak_audio(engine, character, wave: np.ndarray, steps: int | None, seed: int = 0) -> Generated:
    """Drive ``character`` with speech ``wave`` (16 kHz) through an offline audio-driven engine session."""
    out = Generated()
    session = engine.session([character], mode="audio", steps=steps, realtime=False, seed=seed)
    try:
        session.push_audio(wave, final=True)
        for chunk in session:
            out.add(chunk, session)
        out.stats = session.stats.summary()
    finally:
        session.close()
    return out


def driving_speech(driver: str, clip, timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """The speech that drives an audio-driven row (at ``timeline``'s sample rate) and the phoneme id of each of
    its video frames (at its frame rate):
    the clip's own speech, or espeak-ng's speech of its transcript in the clip character's corpus voice."""
    from streamchar.data.espeak import Voice
    from streamchar.data.phonemes import frame_phoneme_ids
    from streamchar.data.synth import espeak_speech

    if driver == "speech":
        wave, phonemes = clip.audio.astype(np.float32), [tuple(p) for p in clip.meta["phonemes"]]
    else:
        wave, phonemes = espeak_speech(
            clip.meta["transcript"], Voice(**clip.meta["voice"]), timeline.sample_rate
        )
    frames = int(np.ceil(len(wave) / timeline.sample_rate * timeline.fps))
    return wave, frame_phoneme_ids(phonemes, frames, timeline.fps)


ABLATIONS = {
    "nosink": "sink",
    "nomotion": "motion_frames",
    "norealign": "realign",
    "prioronly": "refine",
}  # flag -> engine switch off
# flag -> an engine setting it plays the checkpoint with instead of the model's own
SETTINGS = {
    # the student's whole correction of the priors' means (played in time as the model's settings say:
    # engine.video_correction_time is left as it is)
    "keepall": {
        "keep_correction": [1.0, 1.0],
        "audio_correction": "whole",
        "video_correction": "whole",
        "video_correction_feedback": True,
        "video_correction_detail": 0,
        "video_correction_skip": 0,
    },
}
# flag -> what drives the character instead of the text (an audio-driven session; short protocol only)
DRIVERS = {
    "cascade": "espeak-ng speech of the text in the clip character's corpus voice (a TTS -> animator cascade)",
    "speech": "the held-out clip's own speech",
}


@dataclass(frozen=True)
class CkptSpec:
    """One ``--ckpt``: its row name, folder, steps (None: its own), engine switches and driver (None: text)."""

    name: str
    path: str
    steps: int | None
    switches: dict[str, object]  # engine settings: ablation switches (False) and SETTINGS
    driver: str | None = None

    def __iter__(self):  # unpacks as (name, path, steps, switches)
        return iter((self.name, self.path, self.steps, self.switches))


def parse_ckpt(spec: str) -> CkptSpec:
    """``[NAME=]PATH[@STEPS][:FLAG...]``; ablations switch an engine part off: ``:nosink``, ``:nomotion``,
    ``:norealign`` (engine.sink, engine.motion_frames, engine.realign) and ``:prioronly`` (engine.refine: the
    priors alone); ``:keepall`` keeps all of the student's correction of the means (engine.keep_correction,
    engine.audio_correction, engine.video_correction, engine.video_correction_feedback,
    engine.video_correction_detail, engine.video_correction_skip; the sampling, engine.audio_noise_scale
    included, stays the model's);
    drivers replace the text by speech: ``:cascade`` (espeak-ng in the character's voice) and
    ``:speech`` (the clip's own)."""
    name, rest = "", spec
    if "=" in spec and not Path(spec.partition("@")[0].partition(":")[0]).is_dir():  # a path may hold "="
        name, _, rest = spec.partition("=")
    rest, *flags = rest.split(":")
    unknown = [f for f in flags if f not in ABLATIONS and f not in DRIVERS and f not in SETTINGS]
    if unknown:
        raise ValueError(
            f"--ckpt {spec}: unknown flag ':{unknown[0]}'; use :{', :'.join([*ABLATIONS, *SETTINGS, *DRIVERS])}."
        )
    drivers = [f for f in flags if f in DRIVERS]
    if len(drivers) > 1:
        raise ValueError(f"--ckpt {spec}: give at most one driver (:{', :'.join(DRIVERS)}).")
    path, _, steps = rest.partition("@")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"Checkpoint folder {path} not found; give a teacher or student folder such as "
                                "checkpoints/tiny/student-s2-2step.")  # fmt: skip
    if steps and not steps.isdigit():
        raise ValueError(f"--ckpt {spec}: the step count after @ must be a whole number.")
    name = name or (Path(path).name + (f"@{steps}" if steps else "") + "".join(f":{f}" for f in flags))
    switches = {ABLATIONS[f]: False for f in flags if f in ABLATIONS}
    for setting in (SETTINGS[f] for f in flags if f in SETTINGS):
        switches |= setting
    return CkptSpec(name, path, int(steps) if steps else None, switches, drivers[0] if drivers else None)


def engine_for(cfg, path: str, switches: dict[str, object]):
    """The engine for one ``--ckpt``, with its ablation switches and settings."""
    import copy

    from streamchar.engine.engine import Engine

    cfg = copy.deepcopy(cfg)
    for key, value in switches.items():
        setattr(cfg.engine, key, value)
    return Engine.from_config(cfg, denoiser_path=path)
