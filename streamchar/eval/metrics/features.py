"""The evaluation instruments' fixed front-ends, and a cache of them over a corpus.

Every instrument of the evaluation suite (the CTC recognizer, the sync expert, the identity and speaker
encoders) reads one of three views, computed here:

- ``log_mel``: the phoneme reader's front-end (:func:`streamchar.orchestrator.reader.log_mel`), 80 log-mel
  bands at 100 frames/s from a 25 ms window, independent of the audio codec's own mel settings, so that the
  instruments do not share the codec's blind spots;
- ``mouth_crops``: the lower-middle of each frame (where every corpus character's mouth sits), grey,
  at half resolution ``[T, 24, 32]`` for 128 px frames;
- ``face_views``: whole frames at 64 x 64 RGB.

:func:`build_eval_cache` computes the views for every clip of a corpus once (``streamchar eval
cache``), so that training an instrument is a pass over arrays in memory, not over video files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from streamchar.data.phonemes import SILENCE_ID, phoneme_id
from streamchar.orchestrator.reader import MEL_HOP, SAMPLE_RATE, log_mel
from streamchar.timeline import Timeline

logger = logging.getLogger(__name__)

# The instruments see video at the default timeline's frame rate and hear audio at the front-end's sample
# rate, whatever timeline the judged model runs at.
INSTRUMENT_TIMELINE = Timeline(sample_rate=SAMPLE_RATE)
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // MEL_HOP
MEL_PER_VIDEO_FRAME = MEL_FRAMES_PER_SECOND // INSTRUMENT_TIMELINE.fps
FACE_SIZE = 64
# the mouth window as fractions of the frame: rows 52/128 .. 100/128, columns 32/128 .. 96/128
MOUTH_ROWS = (0.40625, 0.78125)
MOUTH_COLS = (0.25, 0.75)
MOUTH_SHAPE = (24, 32)
FACES_PER_CLIP = 8
CACHE_VERSION = 1


class EvalCacheError(ValueError):
    """An evaluation cache that cannot be used; the message says what to do."""


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize ``uint8 [N, H, W, C]`` to ``[N, *size, C]``."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # frames decoded from a file are read-only
        images = images.copy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=size, mode="area")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mouth_crops(frames: np.ndarray) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` -> grey mouth windows ``uint8 [T, 24, 32]``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Expected RGB frames [T, H, W, 3], got shape {frames.shape}.")
    h, w = frames.shape[1:3]
    rows = slice(round(MOUTH_ROWS[0] * h), round(MOUTH_ROWS[1] * h))
    cols = slice(round(MOUTH_COLS[0] * w), round(MOUTH_COLS[1] * w))
    grey = frames[:, rows, cols].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return _resize(grey.round().astype(np.uint8)[..., None], MOUTH_SHAPE)[..., 0]


def face_views(frames: np.ndarray) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` -> ``uint8 [T, 64, 64, 3]``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Expected RGB frames [T, H, W, 3], got shape {frames.shape}.")
    return _resize(frames, (FACE_SIZE, FACE_SIZE))


def clip_phoneme_ids(meta: dict) -> list[int]:
    """The clip's spoken phoneme sequence (silences dropped), the CTC target."""
    phonemes = meta["phonemes"]
    phonemes = json.loads(phonemes) if isinstance(phonemes, str) else phonemes
    ids = [phoneme_id(label) for label, _, _ in phonemes]
    return [i for i in ids if i != SILENCE_ID]


def voice_key(meta: dict) -> str:
    voice = meta.get("voice") or {}
    return json.dumps(voice, sort_keys=True)


@dataclass
class EvalSplit:
    """One split of the evaluation cache: per-clip views packed into flat arrays with offsets."""

    clips: list[dict]  # key, char_id, voice, transcript, phoneme_ids, kind, speaking_spans, offsets
    mel: torch.Tensor  # float16 [sum M, 80]
    mouth: torch.Tensor  # uint8 [sum T, 24, 32]
    mouth_open: torch.Tensor  # float16 [sum T] (NaN for clips without ground truth, e.g. real videos)
    faces: torch.Tensor  # uint8 [sum F, 64, 64, 3]

    def monologues(self) -> list[int]:
        """Clips whose audio is exactly the character's own transcript (the recognizer's and speaker
        encoder's speech)."""
        return [
            i
            for i, c in enumerate(self.clips)
            if c.get("kind", "monologue") == "monologue" and c["phoneme_ids"]
        ]

    def _rows(self, packed: torch.Tensor, offsets: str, i: int) -> torch.Tensor:
        """Clip ``i``'s rows of a ``packed`` array, between the (start, end) of its entry ``offsets``."""
        span = self.clips[i][offsets]
        return packed[span[0] : span[1]]

    def clip_mel(self, i: int) -> torch.Tensor:
        return self._rows(self.mel, "mel", i).float()

    def clip_mouth(self, i: int) -> torch.Tensor:
        return self._rows(self.mouth, "frames", i)

    def clip_mouth_open(self, i: int) -> torch.Tensor:
        return self._rows(self.mouth_open, "frames", i).float()

    def clip_faces(self, i: int) -> torch.Tensor:
        return self._rows(self.faces, "faces", i)


def _clip_views(clip) -> dict:
    if clip.sample_rate != SAMPLE_RATE:
        raise EvalCacheError(
            f"Clip {clip.key} is at {clip.sample_rate} Hz; the evaluation suite reads {SAMPLE_RATE} Hz."
        )
    frames = clip.frames
    picks = np.linspace(0, len(frames) - 1, min(FACES_PER_CLIP, len(frames))).round().astype(int)
    mouth_open = clip.ground_truth.get("mouth_open")
    if mouth_open is not None and len(mouth_open) != len(frames):
        raise EvalCacheError(f"Clip {clip.key} has {len(mouth_open)} mouth-opening values for {len(frames)} frames; "
                             "re-synthesise or re-prepare the corpus.")  # fmt: skip
    return {
        "mel": log_mel(clip.audio).half(),
        "mouth": torch.from_numpy(mouth_crops(frames)),
        "mouth_open": torch.from_numpy(
            np.full(len(frames), np.nan, np.float32)
            if mouth_open is None
            else np.asarray(mouth_open, np.float32)
        ).half(),
        "faces": torch.from_numpy(face_views(frames[picks])),
    }


def build_eval_cache(corpus_folder: str | Path, out: str | Path, max_clips: int = 0) -> Path:
    """Compute every clip's views once; writes ``OUT/{train,test}.pt`` and ``OUT/cache.json``.

    Resumable at split granularity: a split whose file exists is kept.
    """
    from streamchar.data.shards import Corpus

    corpus = Corpus(corpus_folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        path = out / f"{split}.pt"
        if path.is_file():
            logger.info("%s exists; keeping it", path)
            continue
        entries = corpus.entries(split)[: max_clips or None]
        clips, parts = [], {"mel": [], "mouth": [], "mouth_open": [], "faces": []}
        counts = {"mel": 0, "frames": 0, "faces": 0}
        for entry in tqdm(entries, desc=f"eval cache ({split})", unit="clip"):
            clip = corpus.clip(entry)
            views = _clip_views(clip)
            for name in parts:
                parts[name].append(views[name])
            record = {
                "key": clip.key,
                "char_id": int(clip.meta["char_id"]),
                "voice": voice_key(clip.meta),
                "transcript": clip.meta.get("transcript", ""),
                "phoneme_ids": clip_phoneme_ids(clip.meta),
                "kind": clip.meta.get("kind", "monologue"),
                "speaking_spans": clip.meta.get("speaking_spans", []),
            }
            for name, size in (
                ("mel", len(views["mel"])),
                ("frames", len(views["mouth"])),
                ("faces", len(views["faces"])),
            ):
                record[name] = [counts[name], counts[name] + size]
                counts[name] += size
            clips.append(record)
        payload = {name: torch.cat(tensors) for name, tensors in parts.items()}
        payload["clips"] = clips
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
    (out / "cache.json").write_text(
        json.dumps({"version": CACHE_VERSION, "corpus": str(Path(corpus_folder).resolve())}, indent=1)
    )
    return out


def load_eval_split(cache: str | Path, split: str) -> EvalSplit:
    path = Path(cache) / f"{split}.pt"
    if not path.is_file():
        raise EvalCacheError(
            f"{path} not found; build the evaluation cache with `streamchar eval cache CORPUS --out {cache}`."
        )
    meta = Path(cache) / "cache.json"
    if meta.is_file() and json.loads(meta.read_text()).get("version") != CACHE_VERSION:
        raise EvalCacheError(f"{cache} was built by another StreamChar version; delete it and rebuild it.")
    data = torch.load(path, weights_only=True)
    return EvalSplit(data["clips"], data["mel"], data["mouth"], data["mouth_open"], data["faces"])
