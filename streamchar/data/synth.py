"""The synthetic talking-character corpus (``streamchar data synth``).

The corpus is planned as a list of jobs, each drawn from its own random stream
``(seed, job index)``, so a clip is the same whatever the number of workers or shards. A job is a
monologue (one character speaks one or two sentences between silences), a dialogue (two
characters take turns; both views are kept, so each appears once speaking and once listening) or
a listening clip (the character idles and nods while someone off screen talks).

Splits hold out whole identities and whole sentences: characters are assigned to ``train`` or
``test`` by a seeded permutation, and each split draws only its own sentences.

Shards are the unit of work and of resumption: a worker renders a shard's jobs and writes the
shard atomically; a re-run skips shards that are complete.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamchar.config import StreamCharConfig, to_dict
from streamchar.config_sections import SynthConfig
from streamchar.data.characters import CharacterRenderer, Identity, sample_identity
from streamchar.data.espeak import PAUSE_PHONEMES, Voice, get_espeak
from streamchar.data.motion import articulation_emphasis, motion_tracks
from streamchar.data.sentences import SentenceGenerator
from streamchar.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    ShardWriter,
    collect_index,
    shard_name,
    write_json_atomic,
)
from streamchar.media import encode_video_bytes, resample
from streamchar.timeline import Timeline

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: ground truth holds the mouth box
_TARGET_RMS = 0.08  # speech loudness after normalisation (about -22 dBFS)


@dataclass(frozen=True)
class Job:
    index: int
    kind: str  # monologue | dialogue | listening
    char_id: int
    partner_id: int  # -1 when there is none
    split: str


def character_splits(cfg: SynthConfig) -> dict[int, str]:
    """Character id -> 'train' or 'test' (held-out identities)."""
    rng = np.random.default_rng([cfg.seed, 0x5917])
    order = rng.permutation(cfg.num_characters)
    n_test = (
        int(math.ceil(cfg.num_characters * cfg.heldout_identity_fraction))
        if cfg.heldout_identity_fraction
        else 0
    )
    test = set(order[:n_test].tolist())
    return {c: ("test" if c in test else "train") for c in range(cfg.num_characters)}


def plan_jobs(cfg: SynthConfig) -> list[Job]:
    """Every job of the corpus, in a fixed order."""
    if cfg.num_characters < 1 or cfg.clips_per_character < 1:
        raise ValueError("data.synth.num_characters and data.synth.clips_per_character must be at least 1.")
    splits = character_splits(cfg)
    by_split: dict[str, list[int]] = {}
    for c, s in splits.items():
        by_split.setdefault(s, []).append(c)
    rng = np.random.default_rng([cfg.seed, 0x70B5])
    jobs: list[Job] = []
    for c in range(cfg.num_characters):
        peers = [p for p in by_split[splits[c]] if p != c]
        for _ in range(cfg.clips_per_character):
            r = rng.random()
            if r < cfg.dialogue_fraction and peers:
                kind, partner = "dialogue", int(peers[rng.integers(len(peers))])
            elif r < cfg.dialogue_fraction + cfg.listening_fraction:
                kind, partner = "listening", -1
            else:
                kind, partner = "monologue", -1
            jobs.append(Job(len(jobs), kind, c, partner, splits[c]))
    return jobs


# -- one job --------------------------------------------------------------------------------------
@dataclass
class _Speech:
    samples: np.ndarray  # float32 at the timeline rate
    words: list[tuple[str, float, float]]
    phonemes: list[tuple[str, float, float]]
    text: str


def _speak(text: str, voice: Voice, sample_rate: int) -> _Speech:
    utt = get_espeak().synthesize(text, voice)
    samples = resample(utt.samples, utt.sample_rate, sample_rate)
    rms = float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0
    if rms > 0:
        samples = samples * min(_TARGET_RMS / rms, 0.95 / (np.abs(samples).max() + 1e-9))
    words = [(w.label, w.start, w.end) for w in utt.words]
    phonemes = [(p.label, p.start, p.end) for p in utt.phonemes if p.label not in PAUSE_PHONEMES]
    return _Speech(samples.astype(np.float32), words, phonemes, text)


def espeak_speech(
    text: str, voice: Voice, sample_rate: int
) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """``text`` spoken by espeak-ng in ``voice`` as the corpus speaks it (resampled, loudness-normalised):
    ``(samples float32 [N], phonemes (label, start s, end s))``, what a cascade TTS would hand the animator."""
    speech = _speak(text, voice, sample_rate)
    return speech.samples, speech.phonemes


def _place(track: np.ndarray, speech: _Speech, offset_s: float, sample_rate: int) -> float:
    """Add ``speech`` into ``track`` at ``offset_s``; returns the exact offset used (whole samples)."""
    start = int(round(offset_s * sample_rate))
    end = min(start + len(speech.samples), len(track))
    track[start:end] += speech.samples[: end - start]
    return start / sample_rate


def _shift(items: list[tuple[str, float, float]], dt: float) -> list[tuple[str, float, float]]:
    return [(label, round(s + dt, 6), round(e + dt, 6)) for label, s, e in items]


def _frame_energy(audio: np.ndarray, timeline: Timeline, num_frames: int) -> np.ndarray:
    hop = timeline.samples_per_video_frame
    frames = audio[: num_frames * hop].reshape(num_frames, hop)
    rms = np.sqrt((frames**2).mean(axis=1))
    return (rms / (rms.max() + 1e-9)).astype(np.float32)


class _Character:
    """One character's identity and renderer, built once per job."""

    def __init__(self, cfg: SynthConfig, char_id: int, image_size: int) -> None:
        self.identity: Identity = sample_identity(cfg.seed, char_id, tuple(cfg.styles))
        self.renderer = CharacterRenderer(self.identity, image_size)


def synthesize_job(job: Job, cfg: SynthConfig, timeline: Timeline, image_size: int) -> list[dict]:
    """Render one job into one clip (two for a dialogue). Each clip is a dict with ``key``,
    ``meta``, ``frames`` uint8 [T, H, W, 3], ``audio`` float32 [N], ``ground_truth`` and ``summary``."""
    rng = np.random.default_rng([cfg.seed, job.index, 0xC11])
    sentences = SentenceGenerator(rng, heldout_fraction=cfg.heldout_sentence_fraction)
    sr = timeline.sample_rate
    lead = rng.uniform(*cfg.lead_silence)
    tail = rng.uniform(*cfg.tail_silence)

    speakers = [_Character(cfg, job.char_id, image_size)]
    if job.kind == "dialogue":
        speakers.append(_Character(cfg, job.partner_id, image_size))

    # 1. the script: who says what, and when
    turns: list[tuple[int, _Speech, float]] = []  # (speaker index, speech, start seconds)
    cursor = lead
    if job.kind == "monologue":
        n_sent = int(rng.integers(1, cfg.max_sentences + 1))
        text = " ".join(sentences.sentence(job.split, cfg.min_words, cfg.max_words) for _ in range(n_sent))
        speech = _speak(text, speakers[0].identity.voice, sr)
        turns.append((0, speech, cursor))
        cursor += len(speech.samples) / sr
    elif job.kind == "dialogue":
        for t in range(int(rng.integers(2, 5))):
            who = t % 2
            text = sentences.sentence(job.split, cfg.min_words, cfg.max_words)
            speech = _speak(text, speakers[who].identity.voice, sr)
            turns.append((who, speech, cursor))
            cursor += len(speech.samples) / sr + rng.uniform(0.25, 0.8)
    duration = cursor + tail if job.kind != "listening" else rng.uniform(3.0, 6.0)
    num_frames = timeline.samples_to_video_frames(int(round(duration * sr)))
    num_samples = timeline.video_frames_to_samples(num_frames)

    # 2. one audio track per speaker, with timings in clip time
    tracks = [np.zeros(num_samples, np.float32) for _ in speakers]
    words: list[list] = [[] for _ in speakers]
    phonemes: list[list] = [[] for _ in speakers]
    spans: list[list] = [[] for _ in speakers]
    texts: list[list[str]] = [[] for _ in speakers]
    for who, speech, start in turns:
        t0 = _place(tracks[who], speech, start, sr)
        words[who] += _shift(speech.words, t0)
        phonemes[who] += _shift(speech.phonemes, t0)
        if speech.phonemes:
            spans[who].append((round(t0 + speech.phonemes[0][1], 6), round(t0 + speech.phonemes[-1][2], 6)))
        texts[who].append(speech.text)
    if job.kind == "listening":  # someone off screen talks; the character only reacts
        t = rng.uniform(0.2, 1.0)
        off_screen = []
        while t < duration - 0.8:
            length = rng.uniform(0.8, 2.0)
            off_screen.append((t, min(t + length, duration)))
            t += length + rng.uniform(0.3, 1.0)

    # 3. motion, frames and ground truth per view
    clips = []
    for who, character in enumerate(speakers):
        partner = 1 - who if len(speakers) == 2 else -1
        partner_turns = spans[partner] if partner >= 0 else (off_screen if job.kind == "listening" else [])
        partner_side = (
            (1.0 if who == 0 else -1.0) if partner >= 0 else (0.6 if job.kind == "listening" else 0.0)
        )
        energy = _frame_energy(tracks[who], timeline, num_frames)
        emphasis = articulation_emphasis(phonemes[who], tracks[who], sr)
        motion = motion_tracks(
            rng, character.identity, num_frames, timeline.fps, phonemes[who], words[who], spans[who],
            partner_turns, partner_side, energy, emphasis,
        )  # fmt: skip
        states = [motion.state(k) for k in range(num_frames)]
        frames = np.stack([character.renderer.render(state) for state in states])
        ground_truth = motion.ground_truth()
        # [T, 4] (x0, y0, x1, y1) fractions of the frame: where the mouth may be drawn (the loss weights it)
        ground_truth["mouth_box"] = np.array([character.renderer.mouth_box(s) for s in states], np.float32)
        key = f"{job.index:06d}-{who}"
        turn_list = [
            {"speaker": "self" if w == who else "partner", "start": round(s, 6), "end": round(s + len(sp.samples) / sr, 6),
             "text": sp.text}
            for w, sp, s in turns
        ]  # fmt: skip
        meta = {
            "key": key,
            "split": job.split,
            "kind": job.kind,
            "char_id": character.identity.char_id,
            "style": character.identity.style,
            "identity": character.identity.to_dict(),
            "voice": character.identity.voice.to_dict(),
            "transcript": " ".join(texts[who]),
            "words": [list(w) for w in words[who]],
            "phonemes": [list(p) for p in phonemes[who]],
            "speaking_spans": [list(s) for s in spans[who]],
            "listening_spans": [list(s) for s in partner_turns],
            "turns": turn_list,
            "dialogue_id": f"{job.index:06d}" if job.kind == "dialogue" else None,
            "partner_char_id": speakers[partner].identity.char_id if partner >= 0 else None,
            "partner_side": partner_side,
            "num_frames": num_frames,
            "fps": timeline.fps,
            "sample_rate": sr,
            "duration": num_frames / timeline.fps,
            "image_size": image_size,
            "seed": cfg.seed,
            "job": job.index,
            "generator_version": GENERATOR_VERSION,
        }
        summary = {
            "split": job.split,
            "kind": job.kind,
            "char_id": character.identity.char_id,
            "style": character.identity.style,
            "num_frames": num_frames,
            "duration": num_frames / timeline.fps,
            "dialogue_id": meta["dialogue_id"],
            "speaking_seconds": round(sum(e - s for s, e in spans[who]), 4),
        }
        clips.append(
            {"key": key, "meta": meta, "frames": frames, "audio": tracks[who], "ground_truth": ground_truth,
             "summary": summary}
        )  # fmt: skip
    return clips


# -- shards and the whole corpus --------------------------------------------------------------------
def _write_shard(args: tuple) -> tuple[int, list[dict], float, float]:
    shard_index, jobs, cfg_dict, timeline_dict, image_size, out = args
    cfg = SynthConfig(**cfg_dict)
    timeline = Timeline(**timeline_dict)
    t0 = time.perf_counter()
    writer = ShardWriter(out, shard_index)
    seconds = 0.0
    for job in jobs:
        for clip in synthesize_job(job, cfg, timeline, image_size):
            video = encode_video_bytes(clip["frames"], timeline.fps, lossless=True)
            writer.add(clip["key"], clip["meta"], video, clip["audio"], timeline.sample_rate, clip["ground_truth"],
                       clip["summary"])  # fmt: skip
            seconds += clip["meta"]["duration"]
    entries = writer.close()
    return shard_index, entries, seconds, time.perf_counter() - t0


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def synth_corpus(cfg: StreamCharConfig, out: str | Path, progress: bool = True) -> dict:
    """Synthesise (or finish) the corpus in ``out``; returns a summary with the throughput."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scfg = cfg.data.synth
    manifest_path = out / MANIFEST
    synth_settings = {k: v for k, v in to_dict(scfg).items() if k != "workers"}  # not a property of the data
    settings = {
        "synth": synth_settings,
        "timeline": to_dict(cfg.timeline),
        "image_size": cfg.video_codec.image_size,
    }
    previous = out / "synth-settings.json"
    if previous.is_file():
        import json

        if json.loads(previous.read_text()) != settings:
            raise ValueError(
                f"{out} holds a corpus made with other settings; use a new --out folder or delete {out} first."
            )
    write_json_atomic(previous, settings)

    jobs = plan_jobs(scfg)
    per_shard = max(1, scfg.clips_per_shard)
    groups = [jobs[i : i + per_shard] for i in range(0, len(jobs), per_shard)]
    todo = [i for i in range(len(groups)) if not (out / shard_name(i).replace(".tar", ".json")).is_file()]
    if len(todo) < len(groups):
        logger.info("resuming: %d of %d shards already complete", len(groups) - len(todo), len(groups))
    workers = scfg.workers or os.cpu_count() or 1
    tasks = [
        (i, groups[i], to_dict(scfg), to_dict(cfg.timeline), cfg.video_codec.image_size, str(out))
        for i in todo
    ]
    t0 = time.perf_counter()
    clip_seconds = 0.0
    bar = tqdm(total=len(tasks), desc="synth shards", unit="shard", disable=not progress)
    if workers == 1 or len(tasks) <= 1:
        results = map(_write_shard, tasks)
        for _, _, seconds, _ in results:
            clip_seconds += seconds
            bar.update(1)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
            for _, _, seconds, _ in pool.imap_unordered(_write_shard, tasks):
                clip_seconds += seconds
                bar.update(1)
    bar.close()
    wall = time.perf_counter() - t0

    shards, clips = collect_index(out)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": scfg.seed,
        "timeline": to_dict(cfg.timeline),
        "image_size": cfg.video_codec.image_size,
        "synth": synth_settings,
        "shards": shards,
        "clips": clips,
    }
    write_json_atomic(manifest_path, manifest)
    total_seconds = sum(c["duration"] for c in clips)
    summary = {
        "shards": len(shards),
        "clips": len(clips),
        "clip_seconds": round(total_seconds, 2),
        "generated_seconds": round(clip_seconds, 2),
        "wall_seconds": round(wall, 2),
        "throughput": round(clip_seconds / wall, 3) if wall > 0 and clip_seconds else None,
        "splits": {s: sum(1 for c in clips if c["split"] == s) for s in sorted({c["split"] for c in clips})},
    }
    logger.info("corpus in %s: %s", out, summary)
    return summary
