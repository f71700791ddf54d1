"""The evaluation protocols: checkpoints judged by the trained instruments, on held-out identities and text.

- **short**: one held-out clip per held-out identity (``--clips``); each checkpoint speaks the clip's
  transcript as the clip's character (reference image and voice from the corpus), through the streaming
  engine; the ground-truth clips are measured the same way as the floor/ceiling row.
- **long**: sessions of ``--minutes`` (5 and more) per checkpoint, fed held-out sentences turn after turn;
  every metric is reported per ``--segment`` seconds, so drift shows as a trend.

Metrics per clip or segment: PER and WER (CTC recognizer; reference phonemes are espeak's for the text),
Sync-C, Sync-D and offset (sync expert), mouth-opening correlation (pixel probe against the opening the
synthetic renderer draws for the planned phonemes; against the true track for ground truth), identity
similarity to the reference image and voice similarity to the reference voice (cosine), Fréchet distance of
the frames to the held-out ground-truth frames; and the engine's streaming figures: time to first frame,
per-chunk latency p50/p95/p99, real-time factor and deadline misses. Sessions run offline (as fast as
possible), with the playback clock started at the first frame, so a deadline is missed exactly when a live
session would have stalled. A long session's streaming figures come from the engine's own statistics, which
also count the few chunks made ahead before the session stopped at ``--minutes``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamchar.eval.features import load_eval_split

logger = logging.getLogger(__name__)


# -- instruments ------------------------------------------------------------------------------------
@dataclass
class Instruments:
    recognizer: object
    sync: object
    identity: object
    speaker: object
    mouth: object
    external: dict = field(default_factory=dict)  # published models given by local path (EXTERNAL_LOADERS)

    @classmethod
    def load(cls, root: str | Path, external: dict[str, str] | None = None) -> Instruments:
        from streamchar.eval import external as ext
        from streamchar.eval.encoders import load_identity_encoder, load_speaker_encoder
        from streamchar.eval.mouth_probe import load_mouth_reader
        from streamchar.eval.recognizer import load_recognizer
        from streamchar.eval.sync_expert import load_sync_expert

        loaders = {"whisper": ext.load_whisper, "syncnet": ext.load_syncnet, "wavlm": ext.load_wavlm_sv,
                   "arcface": ext.load_arcface, "inception": ext.load_inception, "i3d": ext.load_i3d}  # fmt: skip
        published = {name: loaders[name](path) for name, path in (external or {}).items() if path}
        root = Path(root)
        return cls(load_recognizer(root / "recognizer", words=True), load_sync_expert(root / "sync"),
                   load_identity_encoder(root / "identity"), load_speaker_encoder(root / "speaker"),
                   load_mouth_reader(root / "mouth"), published)  # fmt: skip


def measure_external(published: dict, frames: np.ndarray, audio: np.ndarray, text: str, reference_image: np.ndarray,
                     reference_voice: np.ndarray | None) -> dict:  # fmt: skip
    """The per-clip metrics of the published models that were given: Whisper WER, the official SyncNet's
    Sync-C/D/offset (its own sign convention: positive = audio ahead), ArcFace and WavLM similarity."""
    from streamchar.eval.recognizer import edit_distance, normalise_words

    out: dict = {}
    if "whisper" in published:
        words = normalise_words(text)
        windows = range(0, max(1, len(audio)), 30 * 16000)  # Whisper hears at most 30 s at a time
        heard = [
            w
            for s in windows
            for w in normalise_words(published["whisper"].transcribe(audio[s : s + 30 * 16000]))
        ]
        out["whisper_word_edits"], out["whisper_words"] = edit_distance(words, heard), len(words)
    if "syncnet" in published and len(frames) >= 35:
        scores = published["syncnet"].sync_scores(frames, audio)
        out.update(
            {"syncnet_offset": scores["offset"], "syncnet_c": scores["sync_c"], "syncnet_d": scores["sync_d"]}
        )
    if "arcface" in published:
        picks = frames[:: max(1, len(frames) // 16)]
        out["arcface_sim"] = float(
            (published["arcface"].embed(picks) @ published["arcface"].embed(reference_image[None]).T).mean()
        )
    if "wavlm" in published and reference_voice is not None:
        out["wavlm_sim"] = float(published["wavlm"].similarity(audio, reference_voice))
    return out


def published_frechet(
    published: dict, generated: list[np.ndarray], truth: list[np.ndarray], video_frames: int = 16
) -> dict:
    """FID (Inception) over frames and FVD (I3D) over 16-frame pieces of each clip, generated against ground
    truth (lists of ``uint8 [T, H, W, 3]`` clips)."""
    from streamchar.eval.encoders import frechet_distance

    def pieces(clips):
        return np.concatenate(
            [
                c[: len(c) // video_frames * video_frames].reshape(-1, video_frames, *c.shape[1:])
                for c in clips
            ]
        )

    out = {}
    if "inception" in published:
        fid = frechet_distance(published["inception"].features(np.concatenate(generated)),
                               published["inception"].features(np.concatenate(truth)))  # fmt: skip
        out["fid"] = round(fid, 3)
    if "i3d" in published:
        out["fvd"] = round(
            frechet_distance(
                published["i3d"].features(pieces(generated)), published["i3d"].features(pieces(truth))
            ),
            3,
        )
    return out


def reference_phonemes(text: str, language: str = "en-us") -> list[int]:
    """espeak's phoneme ids for ``text`` (silences dropped): the PER reference."""
    from streamchar.data.espeak import get_phonemizer
    from streamchar.data.phonemes import SILENCE_ID, phoneme_id

    ids = [phoneme_id(p) for group in get_phonemizer().words(text, language) for p in group]
    return [i for i in ids if i != SILENCE_ID]


def measure_speech(inst: Instruments, audio: np.ndarray, text: str, reference_voice: np.ndarray | None,
                   phonemes: list[int] | None = None) -> dict:  # fmt: skip
    """The speech metrics of 16 kHz audio that should say ``text``: phoneme and word edits (against espeak's
    phonemes of the text, or ``phonemes``), the recognizer's transcript, voice similarity to the reference."""
    from streamchar.eval.recognizer import edit_distance, normalise_words

    out: dict = {}
    hypothesis = inst.recognizer.phonemes(audio)
    reference = phonemes if phonemes is not None else reference_phonemes(text)
    words = normalise_words(text)
    out["phoneme_edits"], out["phonemes"] = edit_distance(reference, hypothesis), len(reference)
    recognized = inst.recognizer.lexicon.decode(hypothesis, inst.recognizer.word_penalty)
    out["word_edits"], out["words"] = edit_distance(words, recognized), len(words)
    out["transcript"] = " ".join(recognized)
    if reference_voice is not None and len(audio) >= 8000:
        out["voice_sim"] = float(inst.speaker.embed_audio(audio) @ inst.speaker.embed_audio(reference_voice))
    return out


def measure(inst: Instruments, frames: np.ndarray, audio: np.ndarray, text: str, reference_image: np.ndarray,
            reference_voice: np.ndarray | None, true_open: np.ndarray | None,
            phonemes: list[int] | None = None) -> dict:  # fmt: skip
    """Every per-clip metric of one stretch of frames (25 fps) and 16 kHz audio that should say ``text``."""
    from streamchar.eval.mouth_probe import pearson
    from streamchar.eval.sync_expert import MAX_OFFSET, WINDOW, sync_scores_of

    out: dict = {
        "seconds": round(len(frames) / 25, 2),
        **measure_speech(inst, audio, text, reference_voice, phonemes),
    }
    if len(frames) >= WINDOW + 2 * MAX_OFFSET:
        scores = sync_scores_of(inst.sync, frames, audio)  # offset, sync_c, sync_d, sync_c0
        out.update({"sync_offset" if k == "offset" else k: v for k, v in scores.items()})
    if true_open is not None:
        from streamchar.eval.features import mouth_crops

        n = min(len(frames), len(true_open))
        out["mouth_r"] = pearson(inst.mouth.predict(mouth_crops(frames[:n])), true_open[:n])
    picks = frames[:: max(1, len(frames) // 32)]
    ref = inst.identity.embed_frames(reference_image[None])
    out["identity_sim"] = float((inst.identity.embed_frames(picks) @ ref.T).mean())
    if inst.external:
        out.update(measure_external(inst.external, frames, audio, text, reference_image, reference_voice))
    return out


def summarise(rows: list[dict]) -> dict:
    """Corpus-level PER/WER (edits over reference length) and means of the other per-clip metrics."""
    result = {"clips": len(rows)}
    if rows:
        result["per"] = round(
            sum(r["phoneme_edits"] for r in rows) / max(1, sum(r["phonemes"] for r in rows)), 4
        )
        result["wer"] = round(sum(r["word_edits"] for r in rows) / max(1, sum(r["words"] for r in rows)), 4)
    if rows and "whisper_words" in rows[0]:
        result["whisper_wer"] = round(
            sum(r["whisper_word_edits"] for r in rows) / max(1, sum(r["whisper_words"] for r in rows)), 4
        )
    for key in (
        "sync_c",
        "sync_d",
        "sync_c0",
        "mouth_r",
        "identity_sim",
        "voice_sim",
        "syncnet_c",
        "syncnet_d",
        "arcface_sim",
        "wavlm_sim",
    ):
        values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        if values:
            result[key] = round(float(np.mean(values)), 4)
    offsets = [r["sync_offset"] for r in rows if "sync_offset" in r]
    if offsets:
        result["sync_offset_median"] = float(np.median(offsets))
        result["sync_offset_within_1"] = round(float(np.mean(np.abs(offsets) <= 1)), 4)
    return result


# -- generation through the engine --------------------------------------------------------------------
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
    from streamchar.eval.recognizer import normalise_words

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


def driving_speech(driver: str, clip, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The speech that drives an audio-driven row and the phoneme id of each of its video frames (25 fps):
    the clip's own speech, or espeak-ng's speech of its transcript in the clip character's corpus voice."""
    from streamchar.data.espeak import Voice
    from streamchar.data.phonemes import frame_phoneme_ids
    from streamchar.data.synth import espeak_speech

    if driver == "speech":
        wave, phonemes = clip.audio.astype(np.float32), [tuple(p) for p in clip.meta["phonemes"]]
    else:
        wave, phonemes = espeak_speech(clip.meta["transcript"], Voice(**clip.meta["voice"]), sample_rate)
    frames = int(np.ceil(len(wave) / sample_rate * 25))
    return wave, frame_phoneme_ids(phonemes, frames, 25)


# -- the protocols ------------------------------------------------------------------------------------
ABLATIONS = {
    "nosink": "sink",
    "nomotion": "motion_frames",
    "norealign": "realign",
    "prioronly": "refine",
}  # flag -> engine switch off
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
    switches: dict[str, bool]
    driver: str | None = None

    def __iter__(self):  # unpacks as (name, path, steps, switches)
        return iter((self.name, self.path, self.steps, self.switches))


def parse_ckpt(spec: str) -> CkptSpec:
    """``[NAME=]PATH[@STEPS][:FLAG...]``; ablations switch an engine part off: ``:nosink``, ``:nomotion``,
    ``:norealign`` (engine.sink, engine.motion_frames, engine.realign) and ``:prioronly`` (engine.refine: the
    priors alone); drivers replace the text by speech: ``:cascade`` (espeak-ng in the character's voice) and
    ``:speech`` (the clip's own)."""
    name, rest = "", spec
    if "=" in spec and not Path(spec.partition("@")[0].partition(":")[0]).is_dir():  # a path may hold "="
        name, _, rest = spec.partition("=")
    rest, *flags = rest.split(":")
    unknown = [f for f in flags if f not in ABLATIONS and f not in DRIVERS]
    if unknown:
        raise ValueError(
            f"--ckpt {spec}: unknown flag ':{unknown[0]}'; use :{', :'.join([*ABLATIONS, *DRIVERS])}."
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
    return CkptSpec(name, path, int(steps) if steps else None, switches, drivers[0] if drivers else None)


def _engine(cfg, path: str, switches: dict[str, bool]):
    """The engine for one ``--ckpt``, with its ablation switches."""
    import copy

    from streamchar.engine.session import Engine

    cfg = copy.deepcopy(cfg)
    for key, value in switches.items():
        setattr(cfg.engine, key, value)
    return Engine.from_config(cfg, denoiser_path=path)


def _heldout_clips(corpus, count: int) -> list[dict]:
    """Held-out monologues, one per held-out identity in turn (first clips, then second ones, ...), ``count``
    in all. A character's reference clip (its first monologue by key, :func:`character_from_corpus`) is left
    out when the character has another, so a clip is never judged against its own first frame."""
    by_char: dict[int, list[dict]] = {}
    for e in sorted(corpus.entries("test"), key=lambda e: e["key"]):
        if e.get("kind") == "monologue":
            by_char.setdefault(e["char_id"], []).append(e)
    by_char = {c: (v[1:] if len(v) > 1 else v) for c, v in by_char.items()}
    rounds = max((len(v) for v in by_char.values()), default=0)
    ordered = [v[r] for r in range(rounds) for v in by_char.values() if len(v) > r]
    if not ordered:
        raise ValueError(
            "The corpus has no held-out (test) monologue to evaluate on; synthesise one with held-out identities."
        )
    return ordered[:count]


def _character(corpus, char_id: int, turn_rows, cache: dict, size: int):
    """A held-out corpus character, its reference image at the engine's ``size``."""
    from dataclasses import replace

    from PIL import Image

    from streamchar.engine.characters import character_from_corpus

    if char_id not in cache:
        char = character_from_corpus(corpus, char_id, turn_rows)[0]
        if char.image.shape[0] != size:
            char = replace(
                char, image=np.asarray(Image.fromarray(char.image).resize((size, size), Image.LANCZOS))
            )
        cache[char_id] = char
    return cache[char_id]


def _fd(inst: Instruments, frames: np.ndarray, reference: np.ndarray) -> float:
    from streamchar.eval.encoders import frechet_distance

    return round(frechet_distance(inst.identity.frechet_features(frames), reference), 3)


def _reference_features(inst: Instruments, eval_cache: str | Path) -> np.ndarray:
    """Fréchet features of every held-out face of the evaluation cache (the short protocol's reference)."""
    return inst.identity.frechet_features(load_eval_split(eval_cache, "test").faces.numpy())


def _character_features(inst: Instruments, corpus, char_id: int) -> np.ndarray:
    """Fréchet features of every second frame of one character's ground-truth clips (the long protocol's
    reference: a session shows one character, so it is compared with that character's own frames)."""
    frames = [corpus.clip(e).frames[::2] for e in corpus.entries() if e["char_id"] == char_id]
    return inst.identity.frechet_features(np.concatenate(frames))


def _latency(values: list[float]) -> dict:
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in (50, 95, 99)} if values else {}


def short_protocol(
    cfg, ckpts: list[str], inst: Instruments, corpus, turn_rows, eval_cache, clips: int
) -> dict:
    from streamchar.data.shards import Corpus
    from streamchar.eval.features import clip_phoneme_ids
    from streamchar.eval.mouth_probe import planned_mouth_open

    corpus = Corpus(corpus)
    entries = _heldout_clips(corpus, clips)
    reference = _reference_features(inst, eval_cache)
    characters: dict = {}
    result = {"protocol": "short", "clips": [e["key"] for e in entries], "models": {}}
    truth_rows, truth_frames = [], []
    for entry in tqdm(entries, desc="ground truth", unit="clip"):
        clip = corpus.clip(entry)
        char = _character(corpus, entry["char_id"], turn_rows, characters, cfg.video_codec.image_size)
        true_open = clip.ground_truth.get("mouth_open")
        spoken = clip_phoneme_ids(clip.meta)  # what the clip's own (en-us or en) voice said
        truth_rows.append(measure(inst, clip.frames, clip.audio, clip.meta["transcript"], char.image, char.voice,
                                  true_open, phonemes=spoken))  # fmt: skip
        truth_frames.append(clip.frames)
    result["models"]["ground_truth"] = summarise(truth_rows) | {
        "frechet": _fd(inst, np.concatenate([f[::2] for f in truth_frames]), reference)
    }
    for spec in ckpts:
        ckpt = parse_ckpt(spec)
        name, path, steps, switches = ckpt
        engine = _engine(cfg, path, switches)
        rows, frames_all, latencies, ttff, rtf, misses, lags = [], [], [], [], [], 0, []
        for i, entry in enumerate(tqdm(entries, desc=name, unit="clip")):
            text = corpus.reader(entry["shard"]).meta(entry["key"])["transcript"]
            char = _character(corpus, entry["char_id"], turn_rows, characters, cfg.video_codec.image_size)
            if ckpt.driver is None:
                generated, _ = speak(engine, char, [text], steps, seed=i)
                frames, audio, phonemes, _ = generated.arrays()
            else:  # audio-driven: the speech is given; its own frame phonemes are the planned mouth
                wave, phonemes = driving_speech(ckpt.driver, corpus.clip(entry), engine.timeline.sample_rate)
                generated = speak_audio(engine, char, wave, steps, seed=i)
                frames, audio, _, _ = generated.arrays()
                phonemes = np.concatenate([phonemes, np.zeros(max(0, len(frames) - len(phonemes)), np.int64)])
            rows.append(
                measure(
                    inst,
                    frames,
                    audio,
                    text,
                    char.image,
                    char.voice,
                    planned_mouth_open(phonemes[: len(frames)], 25),
                )  # fmt: skip
            )
            frames_all.append(frames)
            latencies += generated.latencies
            ttff.append(generated.stats["time_to_first_frame_s"])
            rtf.append(generated.stats["real_time_factor"])
            misses += generated.stats["deadline_misses"]
            if generated.stats.get("realign_lag_mean") is not None:
                lags.append(generated.stats["realign_lag_mean"])
        result["models"][name] = summarise(rows) | {
            "frechet": _fd(inst, np.concatenate([f[::2] for f in frames_all]), reference),
            **published_frechet(inst.external, frames_all, truth_frames),
            "time_to_first_frame_s": round(float(np.median(ttff)), 4),
            "chunk_latency_s": _latency(latencies),
            "real_time_factor": round(float(np.mean(rtf)), 4),
            "deadline_misses": misses,
            "chunks": len(latencies),
            "steps": steps or (engine.distilled or {}).get("steps") or cfg.engine.steps,
            "driver": DRIVERS.get(ckpt.driver, "text through the orchestrator"),
            # how far the pointer was ahead of the speech when it was realigned (phonemes; None: no realignment)
            "realign_lag_mean": round(float(np.mean(lags)), 3) if lags else None,
            "latencies": [round(x, 4) for x in latencies],
        }
    return result


def long_protocol(cfg, ckpts: list[str], inst: Instruments, corpus, turn_rows, minutes: float,
                  sessions: int, segment_seconds: float) -> dict:  # fmt: skip
    from streamchar.data.shards import Corpus
    from streamchar.eval.mouth_probe import planned_mouth_open

    corpus = Corpus(corpus)
    entries = _heldout_clips(corpus, 10_000)
    sentences = [corpus.reader(e["shard"]).meta(e["key"])["transcript"] for e in entries]
    seconds = minutes * 60
    characters: dict = {}
    chars = list(dict.fromkeys(e["char_id"] for e in entries))[:sessions]
    result = {
        "protocol": "long",
        "minutes": minutes,
        "segment_seconds": segment_seconds,
        "characters": chars,
        "models": {},
    }
    per_frame = int(segment_seconds * 25)
    for spec in ckpts:
        ckpt = parse_ckpt(spec)
        if ckpt.driver is not None:
            raise ValueError(
                f"--ckpt {spec}: the long protocol speaks text; drivers are for the short protocol."
            )
        name, path, steps, switches = ckpt
        engine = _engine(cfg, path, switches)
        segments: list[list[dict]] = []
        model: dict = {"sessions": []}
        for s, char_id in enumerate(chars):
            char = _character(corpus, char_id, turn_rows, characters, cfg.video_codec.image_size)
            own = _character_features(inst, corpus, char_id)  # this character's ground-truth frames
            script = sentences[s:] + sentences[:s]
            logger.info("%s: a %.1f-minute session as character %d", name, minutes, char_id)
            generated, words = speak(
                engine, char, script * max(4, int(seconds)), steps, seed=s, max_seconds=seconds
            )
            frames, audio, phonemes, word_track = generated.arrays()
            bounds = np.cumsum([0, *map(len, generated.frames)])  # first frame of every chunk
            spf = engine.timeline.samples_per_video_frame
            rows = []
            for k, start in enumerate(range(0, len(frames) - per_frame + 1, per_frame)):
                stop = start + per_frame
                seg_words = np.unique(word_track[start:stop])
                first = {w: int(np.argmax(word_track == w)) for w in seg_words if w >= 0}
                text = " ".join(
                    words[w] for w in sorted(first) if start <= first[w] < stop and w < len(words)
                )
                ids = phonemes[start:stop]
                planned = [int(p) for j, p in enumerate(ids) if p != 0 and (j == 0 or ids[j - 1] != p)]
                row = measure(inst, frames[start:stop], audio[start * spf : stop * spf], text, char.image, char.voice,
                              planned_mouth_open(ids, 25), phonemes=planned)  # fmt: skip
                row["frechet"] = _fd(inst, frames[start:stop:2], own)
                chunk_lat = [
                    lat for lat, b in zip(generated.latencies, bounds[:-1], strict=True) if start <= b < stop
                ]
                row["chunk_latency_s"] = _latency(chunk_lat)
                row["segment"] = k
                rows.append(row)
                if len(segments) <= k:
                    segments.append([])
                segments[k].append(row)
            model["sessions"].append({"char_id": char_id, "stats": generated.stats, "segments": rows,
                                      "latencies": [round(x, 4) for x in generated.latencies]})  # fmt: skip
        model["segments"] = [
            summarise(rows)
            | {
                "frechet": round(float(np.mean([r["frechet"] for r in rows])), 3),
                "start_s": k * segment_seconds,
            }
            for k, rows in enumerate(segments)
        ]
        if len(model["segments"]) >= 2:
            first, last = model["segments"][0], model["segments"][-1]
            model["drift"] = {}
            for key in ("identity_sim", "frechet", "sync_c", "wer", "voice_sim"):
                if key in first and key in last:
                    change = round((last[key] - first[key]) / abs(first[key]), 4) if first[key] else None
                    model["drift"][key] = {"first": first[key], "last": last[key], "change": change}
        result["models"][name] = model
    return result


def run_protocol(cfg, protocol: str, ckpts: list[str], out: str | Path, corpus: str | Path = "data/corpus",
                 eval_cache: str | Path = "data/eval_cache", instruments: str | Path = "checkpoints/eval",
                 turns: str | Path | None = None, clips: int = 24, minutes: float = 5.0, sessions: int = 1,
                 segment_seconds: float = 60.0, external: dict[str, str] | None = None) -> dict:  # fmt: skip
    """Run a protocol and write ``OUT/report.json``, ``OUT/report.md`` and plots."""
    from streamchar.engine.characters import read_turn_rows

    if protocol not in ("short", "long"):
        raise ValueError(f"Unknown protocol '{protocol}'; use short or long.")
    if protocol == "long" and minutes * 60 < 2 * segment_seconds:
        raise ValueError(f"A long session of {minutes:g} min has fewer than two {segment_seconds:g} s segments; "
                         "raise --minutes or lower --segment.")  # fmt: skip
    for spec in ckpts:
        parse_ckpt(spec)  # fail on bad input before loading anything
    inst = Instruments.load(instruments, external)
    turn_rows = read_turn_rows(turns) if turns else None
    if turn_rows is None:
        logger.warning(
            "no --turns table: characters speak without a voice prompt (the orchestrator's default tempo)"
        )
    if protocol == "short":
        result = short_protocol(cfg, ckpts, inst, corpus, turn_rows, eval_cache, clips)
    else:
        result = long_protocol(cfg, ckpts, inst, corpus, turn_rows, minutes, sessions, segment_seconds)
    result["instruments"] = str(instruments)
    write_report(result, out)
    return result


# -- reports ------------------------------------------------------------------------------------------
def _cell(value, fmt: str = "{:.3f}") -> str:
    if value is None:
        return "–"
    return fmt.format(value) if isinstance(value, float) else str(value)


def write_report(result: dict, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    models = result["models"]
    if result["protocol"] == "short":
        columns = ["model", "WER", "PER", "Sync-C", "Sync-D", "Sync-C at 0", "offset within ±1", "mouth r",
                   "identity sim", "voice sim", "Fréchet", "TTFF s", "latency p50/p95/p99 s", "RTF", "misses",
                   "pointer lag"]  # fmt: skip
        extra = [k for k in ("whisper_wer", "syncnet_c", "syncnet_d", "arcface_sim", "wavlm_sim", "fid", "fvd")
                 if any(k in m for m in models.values())]  # fmt: skip
        lines = [f"# Short protocol: {len(result['clips'])} held-out clips (held-out identities and sentences)", "",
                 "| " + " | ".join(columns + extra) + " |", "|---" * len(columns + extra) + "|"]  # fmt: skip
        for name, m in models.items():
            lat = m.get("chunk_latency_s", {})
            cells = [name, _cell(m.get("wer"), "{:.1%}"), _cell(m.get("per"), "{:.1%}"), _cell(m.get("sync_c")),
                     _cell(m.get("sync_d")), _cell(m.get("sync_c0")), _cell(m.get("sync_offset_within_1"), "{:.0%}"),
                     _cell(m.get("mouth_r")), _cell(m.get("identity_sim")), _cell(m.get("voice_sim")),
                     _cell(m.get("frechet"), "{:.2f}"), _cell(m.get("time_to_first_frame_s")),
                     "/".join(f"{lat[k]:.3f}" for k in ("p50", "p95", "p99")) if lat else "–",
                     _cell(m.get("real_time_factor"), "{:.2f}"), str(m.get("deadline_misses", "–")),
                     _cell(m.get("realign_lag_mean"), "{:.2f}")]  # fmt: skip
            lines.append("| " + " | ".join(cells + [_cell(m.get(k)) for k in extra]) + " |")
        (out / "report.md").write_text("\n".join(lines) + "\n")
    else:
        lines = [
            f"# Long protocol: {result['minutes']:g}-minute sessions, {result['segment_seconds']:g} s segments",
            "",
        ]
        for name, m in models.items():
            header = "| from s | WER | PER | Sync-C | offset within ±1 | mouth r | identity sim | voice sim | Fréchet |"
            lines += [f"## {name}", "", header, "|---|" + "---|" * 8]
            for seg in m["segments"]:
                cells = [f"{seg['start_s']:g}", _cell(seg.get("wer"), "{:.1%}"), _cell(seg.get("per"), "{:.1%}"),
                         _cell(seg.get("sync_c")), _cell(seg.get("sync_offset_within_1"), "{:.0%}"),
                         _cell(seg.get("mouth_r")), _cell(seg.get("identity_sim")), _cell(seg.get("voice_sim")),
                         _cell(seg.get("frechet"), "{:.2f}")]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
            stats = m["sessions"][0]["stats"]
            lines += ["", f"Streaming: time to first frame {stats['time_to_first_frame_s']} s, chunk latency "
                      f"{stats['chunk_latency_s']}, real-time factor {stats['real_time_factor']}, deadline misses "
                      f"{stats['deadline_misses']}.", ""]  # fmt: skip
            if "drift" in m:
                changes = [f"{k} {v['first']} → {v['last']} ({v['change']:+.1%})"
                           for k, v in m["drift"].items() if v["change"] is not None]  # fmt: skip
                lines += ["First to last segment: " + ", ".join(changes), ""]
        (out / "report.md").write_text("\n".join(lines) + "\n")
        keys = ("identity_sim", "frechet", "sync_c", "wer")
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
        for ax, key in zip(axes, keys, strict=True):
            for name, m in models.items():
                xs = [s["start_s"] / 60 for s in m["segments"]]
                ax.plot(xs, [s.get(key, np.nan) for s in m["segments"]], "o-", label=name)
            ax.set(xlabel="session time (min)", title=key)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, m in models.items():
        lat = m.get("latencies") or [x for s in m.get("sessions", []) for x in s["latencies"]]
        if lat:
            ax.hist(np.array(lat) * 1000, bins=40, alpha=0.55, label=name)
    ax.set(xlabel="chunk latency (ms)", ylabel="chunks", title="per-chunk latency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
