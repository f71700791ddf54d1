"""Real-clip ingestion (``streamchar data prepare``) and the reverse, exporting a corpus as video
files (``streamchar data export``).

Input: a folder of videos with audio; beside each ``NAME.mp4`` a transcript ``NAME.txt`` and,
optionally, a Montreal Forced Aligner alignment ``NAME.TextGrid`` (tiers ``words`` and ``phones``;
ARPAbet phones are mapped onto the espeak inventory; a ``phones-espeak`` tier, as ``data export``
writes, is taken as is). Clips in the same folder are taken to be
the same character (the latent cache draws reference images and voices from a character's other
clips); clips under a ``test/`` folder form the held-out split, all others ``train``.

Each clip is decoded with PyAV, resampled to the timeline's frame rate (by presentation time, so
variable frame rates are handled) and sample rate, centre-cropped to a square, resized and written
to shards in the same format as the synthetic corpus. A clip that cannot be used (no audio stream,
a corrupt file, a missing or empty transcript, a broken TextGrid, too short or too long) is skipped
with its reason logged and counted; the run never aborts for one bad clip. Progress is kept in
``prepare-ledger.jsonl``, so re-running resumes instead of redoing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from streamchar.config import StreamCharConfig, to_dict
from streamchar.data.phonemes import SILENCE, arpabet_to_espeak, canonical_phoneme
from streamchar.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    Corpus,
    ShardWriter,
    collect_index,
    write_json_atomic,
)
from streamchar.data.textgrid import (
    TextGrid,
    TextGridError,
    Tier,
    format_textgrid,
    intervals_with_gaps,
    read_textgrid,
)
from streamchar.media import MediaError, Mp4Writer, encode_video_bytes, fit_length, read_video_timed
from streamchar.timeline import Timeline

logger = logging.getLogger(__name__)

LEDGER = "prepare-ledger.jsonl"
# exported corpora keep espeak's phoneme mnemonics in a tier of this name (MFA's "phones" are ARPAbet,
# and the two sets share letters with other meanings: espeak V is a vowel, ARPAbet V a consonant)
ESPEAK_TIER = "phones-espeak"


class SkipClip(Exception):
    """A clip that cannot be ingested: a reason category (counted in the summary) and details."""

    def __init__(self, category: str, detail: str | None = None) -> None:
        super().__init__(f"{category} ({detail})" if detail else category)
        self.category = category


def clip_key(relative: str) -> str:
    """A shard-safe key: the file's stem (letters, digits, _ and -) plus a hash of its path."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(relative).stem)[:40] or "clip"
    return f"{stem}-{hashlib.sha1(relative.encode()).hexdigest()[:10]}"


def square_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size`` x ``size`` (Lanczos)."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(frame[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.LANCZOS))


def resample_frames(frames: np.ndarray, times: np.ndarray, fps: int, duration: float) -> np.ndarray:
    """Frames at ``fps`` for ``duration`` seconds: for each output frame, the source frame on
    screen at its start time (the last one presented at or before it)."""
    count = int(np.floor(duration * fps + 1e-6))
    targets = np.arange(count) / fps
    index = np.clip(np.searchsorted(times, targets + 1e-6, side="right") - 1, 0, len(frames) - 1)
    return frames[index]


def _alignment(path: Path) -> tuple[list[list], list[list]]:
    """Words and phonemes ``[label, start, end]`` from an MFA TextGrid (pauses dropped)."""
    try:
        grid = read_textgrid(path)
    except (TextGridError, OSError) as err:
        raise SkipClip("unreadable TextGrid", str(err)) from err
    words_tier = grid.tier("words", "word")
    espeak_tier = grid.tier(ESPEAK_TIER)
    phones_tier = espeak_tier or grid.tier("phones", "phone", "phonemes")
    to_inventory = canonical_phoneme if espeak_tier is not None else arpabet_to_espeak
    if words_tier is None and phones_tier is None:
        raise SkipClip("TextGrid has neither a 'words' nor a 'phones' tier")
    words = [
        [label, round(s, 6), round(e, 6)]
        for s, e, label in (words_tier.items if words_tier else [])
        if label.strip()
    ]
    phonemes = []
    for s, e, label in phones_tier.items if phones_tier else []:
        phoneme = to_inventory(label) if label.strip() else SILENCE
        if phoneme != SILENCE:
            phonemes.append([phoneme, round(s, 6), round(e, 6)])
    return words, phonemes


def ingest_clip(path: Path, source_root: Path, timeline: Timeline, image_size: int, cfg) -> dict:
    """Decode and normalise one clip; raises :class:`SkipClip` with the reason it cannot be used."""
    transcript_path = path.with_suffix(".txt")
    if not transcript_path.is_file():
        raise SkipClip("no transcript (.txt beside the video)")
    transcript = " ".join(transcript_path.read_text(encoding="utf-8", errors="replace").split())
    if not transcript:
        raise SkipClip("empty transcript")
    words, phonemes = [], []
    textgrid_path = path.with_suffix(".TextGrid")
    if textgrid_path.is_file():
        words, phonemes = _alignment(textgrid_path)
    try:
        frames, times, audio = read_video_timed(path, timeline.sample_rate)
    except MediaError as err:
        raise SkipClip("unreadable video", str(err).rstrip(".")) from err
    if audio is None:
        raise SkipClip("no audio stream")
    duration = min(
        times[-1] + (times[1] - times[0] if len(times) > 1 else 1 / timeline.fps),
        len(audio) / timeline.sample_rate,
    )
    if duration < cfg.min_seconds:
        raise SkipClip("too short", f"{duration:.2f} s < data.prepare.min_seconds")
    if duration > cfg.max_seconds:
        raise SkipClip("too long", f"{duration:.1f} s > data.prepare.max_seconds; cut it into shorter clips")
    frames = resample_frames(frames, times, timeline.fps, duration)
    num_frames = len(frames)
    video = np.stack([square_resize(f, image_size) for f in frames])
    audio = fit_length(audio, timeline.video_frames_to_samples(num_frames))
    relative = path.relative_to(source_root).as_posix()
    parts = Path(relative).parts
    split = "test" if parts[0] == "test" else "train"
    speaker = Path(relative).parent.as_posix() or "."
    key = clip_key(relative)
    meta = {
        "key": key,
        "split": split,
        "kind": "real",
        "char_id": speaker,
        "style": "real",
        "source": relative,
        "transcript": transcript,
        "words": words,
        "phonemes": phonemes,
        "aligned": bool(phonemes),
        "speaking_spans": [[words[0][1], words[-1][2]]] if words else [],
        "num_frames": num_frames,
        "fps": timeline.fps,
        "sample_rate": timeline.sample_rate,
        "duration": num_frames / timeline.fps,
        "image_size": image_size,
    }
    summary = {"split": split, "kind": "real", "char_id": speaker, "style": "real", "num_frames": num_frames,
               "duration": num_frames / timeline.fps, "dialogue_id": None, "speaking_seconds": None}  # fmt: skip
    return {"key": key, "meta": meta, "frames": video, "audio": audio, "summary": summary}


def _read_ledger(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by a kill: that clip is simply redone
                done[entry["source"]] = entry
    return done


def prepare_corpus(cfg: StreamCharConfig, source: str | Path, out: str | Path, progress: bool = True) -> dict:
    """Ingest every video under ``source`` into a corpus in ``out`` (resumable)."""
    from tqdm.auto import tqdm

    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder; pass the folder that holds the videos.")
    out.mkdir(parents=True, exist_ok=True)
    pcfg, timeline, image_size = cfg.data.prepare, cfg.timeline, cfg.video_codec.image_size
    extensions = {e.lower() for e in pcfg.video_extensions}
    videos = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    ledger_path = out / LEDGER
    done = _read_ledger(ledger_path)
    pending = [p for p in videos if p.relative_to(source).as_posix() not in done]
    logger.info(
        "%d videos found, %d already processed, %d to do",
        len(videos),
        len(videos) - len(pending),
        len(pending),
    )

    shard_index = len(list(out.glob("shard-*.json")))
    writer: ShardWriter | None = None
    buffered: list[dict] = []
    reasons: Counter[str] = Counter()
    ok = 0

    def append_ledger(entries: list[dict]) -> None:
        with open(ledger_path, "a") as f:
            for entry in entries:
                f.write(json.dumps(entry) + "\n")

    def flush() -> None:
        nonlocal writer, shard_index, buffered
        if writer is not None and len(writer):
            writer.close()
            append_ledger(buffered)
            shard_index += 1
        writer, buffered = None, []

    for path in tqdm(pending, desc="prepare clips", unit="clip", disable=not progress):
        relative = path.relative_to(source).as_posix()
        try:
            clip = ingest_clip(path, source, timeline, image_size, pcfg)
        except SkipClip as reason:
            logger.warning("skipping %s: %s", relative, reason)
            reasons[reason.category] += 1
            append_ledger(
                [{"source": relative, "status": "skipped", "reason": reason.category, "detail": str(reason)}]
            )
            continue
        if writer is None:
            writer = ShardWriter(out, shard_index)
        video = encode_video_bytes(clip["frames"], timeline.fps, lossless=True)
        writer.add(
            clip["key"], clip["meta"], video, clip["audio"], timeline.sample_rate, None, clip["summary"]
        )
        buffered.append({"source": relative, "status": "ok", "key": clip["key"], "shard": writer.path.name})
        ok += 1
        if len(writer) >= pcfg.clips_per_shard:
            flush()
    flush()

    shards, clips = collect_index(out)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": "prepared",
        "source_folder": str(source),
        "timeline": to_dict(timeline),
        "image_size": image_size,
        "shards": shards,
        "clips": clips,
    }
    write_json_atomic(out / MANIFEST, manifest)
    ledger = _read_ledger(ledger_path)
    all_reasons = Counter(e["reason"] for e in ledger.values() if e["status"] == "skipped")
    summary = {
        "videos_found": len(videos),
        "ingested_now": ok,
        "skipped_now": sum(reasons.values()),
        "already_done": len(videos) - len(pending),
        "clips_in_corpus": len(clips),
        "skipped_total": sum(all_reasons.values()),
        "skip_reasons": dict(sorted(all_reasons.items())),
    }
    logger.info("prepare summary: %s", summary)
    return summary


# -- export ---------------------------------------------------------------------------------------
def export_videos(
    corpus_dir: str | Path, out: str | Path, split: str | None = None, max_clips: int | None = None
) -> dict:
    """Write clips of a corpus as ``KEY.mp4`` (H.264 + AAC) with ``KEY.txt`` and ``KEY.TextGrid``,
    the layout ``streamchar data prepare`` reads. Clips land in ``out/train/CHAR`` or
    ``out/test/CHAR`` so that prepare recovers splits and characters."""
    corpus = Corpus(corpus_dir)
    out = Path(out)
    entries = corpus.entries(split)
    entries = [e for e in entries if e.get("kind") != "listening"][:max_clips]
    written = []
    for entry in entries:
        clip = corpus.clip(entry)
        folder = out / ("test" if clip.meta["split"] == "test" else "train") / f"char{clip.meta['char_id']}"
        folder.mkdir(parents=True, exist_ok=True)
        base = folder / clip.key
        with Mp4Writer(base.with_suffix(".mp4"), clip.meta["fps"], clip.sample_rate, crf=12) as writer:
            writer.write_frames(clip.frames)
            writer.write_audio(clip.audio)
        base.with_suffix(".txt").write_text(clip.meta["transcript"] + "\n")
        duration = clip.meta["duration"]
        words = [(w, s, e) for w, s, e in clip.meta["words"]]
        phones = [(p, s, e) for p, s, e in clip.meta["phonemes"]]
        grid = TextGrid(0.0, duration, [
            Tier("words", "IntervalTier", 0.0, duration, intervals_with_gaps(words, duration)),
            Tier(ESPEAK_TIER, "IntervalTier", 0.0, duration, intervals_with_gaps(phones, duration)),
        ])  # fmt: skip
        base.with_suffix(".TextGrid").write_text(format_textgrid(grid))
        written.append(str(base.with_suffix(".mp4")))
    return {"videos": len(written), "folder": str(out)}
