"""Lip sync: a SyncNet-style audio-visual expert trained on the corpus, and the Sync-C / Sync-D measure.

Two small encoders map 5 video frames of the mouth window (0.2 s at 25 fps,
:func:`~streamchar.eval.metrics.features.mouth_crops`) and the 20 log-mel frames of the same 0.2 s to
unit-length embeddings. Training is contrastive over time shifts: for a window of video, the audio at the
same time must be closer than the audio of the same clip shifted by any of -15..+15 frames, and than audio
from other clips in the batch.

The measure follows the standard SyncNet evaluation: for every video window and every audio offset d in
-15..+15 frames, the Euclidean distance between the video embedding at frame t and the audio embedding
at frame t + d; the distances are averaged over t for each d. The best offset is the d of the smallest
mean distance, Sync-D that smallest mean distance, and Sync-C the median of the 31 mean distances minus
the smallest. Offset convention: audio that lags the video by k frames (a sound heard k frames after the
mouth makes it) gives offset +k.

Sync-C is measured at the best offset, so by construction it does not change when the audio is merely
shifted within the search range; the confidence at the nominal alignment, ``sync_c0`` (the median minus
the mean distance at offset 0), does, and is what falls for a clip that is out of sync.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamchar.eval.instruments.base import fit, save_instrument
from streamchar.eval.metrics.features import INSTRUMENT_TIMELINE, MEL_PER_VIDEO_FRAME, EvalSplit, mouth_crops
from streamchar.loaders import load_instrument
from streamchar.orchestrator.reader import MEL_BANDS, log_mel
from streamchar.precision import instrument_inference

logger = logging.getLogger(__name__)

WINDOW = 5  # video frames per window
MEL_PER_FRAME = MEL_PER_VIDEO_FRAME  # mel frames per video frame
MAX_OFFSET = 15


class SyncExpert(nn.Module):
    def __init__(self, dim: int = 128, width: int = 64) -> None:
        super().__init__()
        w = width
        self.video = nn.Sequential(  # [B, 5, 24, 32]
            nn.Conv2d(WINDOW, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),  # 12 x 16
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),  # 6 x 8
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.GELU(),  # 3 x 4
            nn.Flatten(), nn.Linear(4 * w * 12, dim),
        )  # fmt: skip
        self.audio = nn.Sequential(  # [B, 80, 20]: mel bands as channels, 20 frames of time
            nn.Conv1d(MEL_BANDS, 2 * w, 3, padding=1), nn.GELU(),
            nn.Conv1d(2 * w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.Conv1d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.GELU(),  # 10
            nn.Conv1d(4 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.GELU(),  # 5
            nn.Flatten(), nn.Linear(4 * w * 5, dim),
        )  # fmt: skip
        self.log_scale = nn.Parameter(torch.tensor(2.3))

    def embed_video(self, mouths: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 5, 24, 32]`` -> ``[B, dim]`` unit vectors."""
        x = mouths.float() / 127.5 - 1
        return nn.functional.normalize(self.video(x).float(), dim=-1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """``[B, 20, 80]`` log-mel -> ``[B, dim]`` unit vectors."""
        return nn.functional.normalize(self.audio(mel.transpose(1, 2) / 4).float(), dim=-1)


def video_windows(mouth: torch.Tensor) -> torch.Tensor:
    """``[T, 24, 32]`` -> ``[T - 4, 5, 24, 32]``: window t covers frames t .. t + 4."""
    return mouth.unfold(0, WINDOW, 1).permute(0, 3, 1, 2)


def audio_windows(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """``[M, 80]`` -> ``[frames - 4, 20, 80]`` aligned with :func:`video_windows` (zero-padded at the end)."""
    need = frames * MEL_PER_FRAME
    mel = mel[:need]
    if len(mel) < need:
        mel = torch.cat([mel, torch.zeros(need - len(mel), mel.shape[1])])
    per_frame = mel.reshape(frames, MEL_PER_FRAME, MEL_BANDS)
    return per_frame.unfold(0, WINDOW, 1).permute(0, 3, 1, 2).reshape(frames - WINDOW + 1, -1, MEL_BANDS)


def offset_distances(
    expert: SyncExpert, mouth: torch.Tensor, mel: torch.Tensor, max_offset: int = MAX_OFFSET
):
    """Mean embedding distance per audio offset ``-max_offset..max_offset`` (``float [2 max_offset + 1]``),
    over the video windows for which every offset has audio."""
    frames = len(mouth)
    if frames < WINDOW + 2 * max_offset:
        raise ValueError(
            f"Sync needs at least {WINDOW + 2 * max_offset} frames for a ±{max_offset} search, got {frames}."
        )
    with instrument_inference():
        v = expert.embed_video(video_windows(mouth))  # [W, D]
        a = expert.embed_audio(audio_windows(mel, frames))  # [W, D]
    count = len(v) - 2 * max_offset
    times = torch.arange(max_offset, max_offset + count)
    means = [
        torch.linalg.vector_norm(v[times] - a[times + d], dim=-1).mean()
        for d in range(-max_offset, max_offset + 1)
    ]
    return torch.stack(means).numpy()


def sync_scores(
    expert: SyncExpert, mouth: torch.Tensor, mel: torch.Tensor, max_offset: int = MAX_OFFSET
) -> dict:
    """``{"offset", "sync_c", "sync_d", "sync_c0"}`` of one clip (see the module docstring)."""
    dist = offset_distances(expert, mouth, mel, max_offset)
    best = int(np.argmin(dist))
    return {
        "offset": best - max_offset,
        "sync_d": float(dist[best]),
        "sync_c": float(np.median(dist) - dist[best]),
        "sync_c0": float(np.median(dist) - dist[max_offset]),
    }


def sync_scores_of(
    expert: SyncExpert, frames: np.ndarray, audio: np.ndarray, max_offset: int = MAX_OFFSET
) -> dict:
    """:func:`sync_scores` from RGB frames ``uint8 [T, H, W, 3]`` at 25 fps and 16 kHz audio."""
    return sync_scores(expert, torch.from_numpy(mouth_crops(frames)), log_mel(audio), max_offset)


def shift_audio(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """Delay (``frames > 0``) or advance the audio by whole video frames, padding with the clip's quietest
    mel frame so the length is unchanged."""
    step = frames * MEL_PER_FRAME
    if step == 0:
        return mel
    fill = mel[mel.sum(-1).argmin()].expand(abs(step), -1)
    return torch.cat([fill, mel[:-step]]) if step > 0 else torch.cat([mel[-step:], fill])


# -- training and proof ------------------------------------------------------------------------------
def _usable(split: EvalSplit, margin: int) -> list[int]:
    """Clips with speech (listening clips are silent) long enough for a ±``margin`` search."""
    return [i for i, c in enumerate(split.clips)
            if c.get("kind") != "listening" and c["frames"][1] - c["frames"][0] >= WINDOW + 2 * margin + 4]  # fmt: skip


def train_sync_expert(split: EvalSplit, steps: int = 2000, batch: int = 32, run_dir: str | Path | None = None,
                      seed: int = 0) -> SyncExpert:  # fmt: skip
    clips = _usable(split, MAX_OFFSET)
    if not clips:
        raise ValueError(
            f"No clip with speech of {WINDOW + 2 * MAX_OFFSET + 4} frames or more to train the sync expert on."
        )
    torch.manual_seed(seed)
    model = SyncExpert()
    offsets = torch.arange(-MAX_OFFSET, MAX_OFFSET + 1)

    def loss_fn(generator: torch.Generator):
        videos, audios = [], []
        for index in torch.randint(0, len(clips), (batch,), generator=generator).tolist():
            i = clips[index]
            mouth, mel = split.clip_mouth(i), split.clip_mel(i)
            frames = len(mouth)
            # an anchor inside the speech when there is any (silence carries no sync information)
            spans = [s for s in split.clips[i].get("speaking_spans", []) if s[1] - s[0] > 0.3]
            lo, hi = MAX_OFFSET, frames - WINDOW - MAX_OFFSET
            if spans:
                span = spans[int(torch.randint(0, len(spans), (1,), generator=generator))]
                fps = INSTRUMENT_TIMELINE.fps
                lo, hi = max(lo, int(span[0] * fps) - 2), min(hi, int(span[1] * fps) - 2)
                lo, hi = (lo, hi) if hi > lo else (MAX_OFFSET, frames - WINDOW - MAX_OFFSET)
            t = int(torch.randint(lo, hi, (1,), generator=generator))
            videos.append(mouth[t : t + WINDOW])
            starts = (t + offsets) * MEL_PER_FRAME
            mel = torch.cat([mel, torch.zeros(max(0, frames * MEL_PER_FRAME - len(mel)), MEL_BANDS)])
            audios.append(torch.stack([mel[s : s + WINDOW * MEL_PER_FRAME] for s in starts.tolist()]))
        v = model.embed_video(torch.stack(videos))  # [B, D]
        a = model.embed_audio(torch.cat(audios)).reshape(batch, len(offsets), -1)  # [B, 31, D]
        scale = model.log_scale.exp()
        # each video window against its own 31 shifted audio windows and the true audio of the others
        own = torch.einsum("bd,bkd->bk", v, a)
        others = scale * (v @ a[:, MAX_OFFSET].T)
        others = others.masked_fill(
            torch.eye(batch, dtype=torch.bool), -1e4
        )  # finite: no 0 * inf in backward
        logits = torch.cat([scale * own, others], dim=1)
        loss = nn.functional.cross_entropy(logits, torch.full((batch,), MAX_OFFSET))
        accuracy = (own.argmax(1) == MAX_OFFSET).float().mean().item()
        return loss, {"acc": accuracy}

    return fit(model, loss_fn, steps, run_dir, lr=1e-3, desc="sync expert", seed=seed)


def evaluate_sync_expert(
    expert: SyncExpert, split: EvalSplit, shifts=(0, 1, 2, 3, 5, 7, 10), max_clips: int = 0
) -> dict:
    """Offset recovery and Sync-C/D on a split's ground-truth clips, with the audio shifted by each of
    ``±shifts`` frames: accuracy (found offset == shift), the mean Sync-C, Sync-D and Sync-C at offset 0."""
    clips = _usable(split, MAX_OFFSET)[: max_clips or None]
    per_shift = {}
    for shift in sorted({s for k in shifts for s in (k, -k)}):
        scores = [
            sync_scores(expert, split.clip_mouth(i), shift_audio(split.clip_mel(i), shift)) for i in clips
        ]
        found = np.array([s["offset"] for s in scores])
        per_shift[shift] = {
            "accuracy": round(float(np.mean(found == shift)), 4),
            "within_1": round(float(np.mean(np.abs(found - shift) <= 1)), 4),
            **{k: round(float(np.mean([s[k] for s in scores])), 4) for k in ("sync_c", "sync_d", "sync_c0")},
        }
    return {"clips": len(clips), "per_shift": per_shift}


def load_sync_expert(folder: str | Path) -> SyncExpert:
    return load_instrument(folder, SyncExpert, "sync expert")


def save_sync_expert(expert: SyncExpert, folder: str | Path, scores: dict, card: str) -> Path:
    return save_instrument(expert, folder, {}, scores, card)
