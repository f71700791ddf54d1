"""A linear probe that reads mouth opening from video latents, for checking that a mouth follows speech.

Fitted by ridge regression on training-split latent frames against the synthetic corpus's ground-truth
mouth opening (averaged over each latent frame's video frames). Applied to generated latents, its
correlation with the driving clip's ground truth says whether the generated mouth opens and closes with
the speech; applied to the held-out ground-truth latents, the same correlation is the probe's ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamchar.data.latents import LatentCache
from streamchar.data.shards import CorpusError
from streamchar.timeline import Timeline


def latent_mouth_open(
    cache: LatentCache, entry: dict, timeline: Timeline, frames: int | None = None
) -> np.ndarray:
    """Ground-truth mouth opening per latent frame ``[T']`` (mean over its video frames)."""
    if not cache.has(entry, "gt/mouth_open"):
        raise CorpusError(f"Clip {entry['key']} has no ground-truth mouth opening (only synthetic clips do).")
    mouth = cache.tensor(entry, "gt/mouth_open").float().numpy()
    n = entry["latent_frames"] if frames is None else min(frames, entry["latent_frames"])
    out = np.zeros(n, np.float32)
    for i in range(n):
        a, b = timeline.latent_frame_span(i)
        out[i] = mouth[a : min(b, len(mouth))].mean() if a < len(mouth) else mouth[-1]
    return out


@dataclass(frozen=True)
class MouthProbe:
    mean: np.ndarray  # [F] feature mean
    weights: np.ndarray  # [F]
    bias: float

    def predict(self, latents: torch.Tensor) -> np.ndarray:
        """Latents ``[C, T', h, w]`` -> predicted mouth opening ``[T']``."""
        x = latents.float().permute(1, 0, 2, 3).flatten(1).numpy()
        return (x - self.mean) @ self.weights + self.bias


def fit_mouth_probe(
    cache: LatentCache,
    timeline: Timeline,
    split: str = "train",
    max_frames: int = 20_000,
    ridge: float = 300.0,
    seed: int = 0,
) -> MouthProbe:
    """Ridge regression from flattened latent frames to mouth opening."""
    rng = np.random.default_rng(seed)
    entries = [e for e in cache.entries(split) if cache.has(e, "gt/mouth_open")]
    if not entries:
        raise CorpusError(f"No '{split}' clip in {cache.folder} has ground-truth mouth opening.")
    rng.shuffle(entries)
    xs, ys, total = [], [], 0
    for entry in entries:
        video = cache.tensor(entry, "video").float()  # [C, T', h, w]
        xs.append(video.permute(1, 0, 2, 3).flatten(1).numpy())
        ys.append(latent_mouth_open(cache, entry, timeline))
        total += len(ys[-1])
        if total >= max_frames:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    mean, bias = x.mean(0), float(y.mean())
    xc = x - mean
    gram = xc.T @ xc + ridge * len(x) / x.shape[1] * np.eye(x.shape[1], dtype=np.float64)
    weights = np.linalg.solve(gram, xc.T @ (y - bias))
    return MouthProbe(mean.astype(np.float32), weights.astype(np.float32), bias)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# -- the pixel probe: mouth opening read from decoded frames ------------------------------------------
@dataclass(frozen=True)
class PixelMouthProbe:
    """Ridge regression from the grey mouth window (:func:`features.mouth_crops`) to mouth opening, fitted
    on the training split's ground truth; it reads generated video the way the latent probe reads
    latents, without trusting the video codec."""

    mean: np.ndarray  # [24 * 32] pixel mean
    weights: np.ndarray  # [24 * 32]
    bias: float

    def predict(self, mouths: np.ndarray) -> np.ndarray:
        """Grey mouth windows ``uint8 [T, 24, 32]`` -> mouth opening ``[T]``."""
        x = np.asarray(mouths, np.float32).reshape(len(mouths), -1) / 255.0
        return (x - self.mean) @ self.weights + self.bias

    def save(self, path) -> None:
        np.savez(path, mean=self.mean, weights=self.weights, bias=np.float32(self.bias))

    @classmethod
    def load(cls, path) -> PixelMouthProbe:
        from pathlib import Path

        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path} not found; fit the mouth probe with `streamchar eval train mouth`."
            )
        data = np.load(path)
        return cls(data["mean"], data["weights"], float(data["bias"]))


def fit_pixel_mouth_probe(mouths: np.ndarray, mouth_open: np.ndarray, ridge: float = 30.0) -> PixelMouthProbe:
    """Ridge fit on ``uint8 [N, 24, 32]`` windows and their true opening ``[N]``."""
    x = np.asarray(mouths, np.float32).reshape(len(mouths), -1).astype(np.float64) / 255.0
    y = np.asarray(mouth_open, np.float64)
    mean, bias = x.mean(0), float(y.mean())
    xc = x - mean
    gram = xc.T @ xc + ridge * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, xc.T @ (y - bias))
    return PixelMouthProbe(mean.astype(np.float32), weights.astype(np.float32), bias)


def planned_mouth_open(phoneme_ids: np.ndarray, fps: float) -> np.ndarray:
    """The mouth opening the synthetic renderer would draw for a per-frame phoneme plan ``[T]`` (runs of
    one id become phonemes; 0 is silence): the "true" opening of a generated clip."""
    from streamchar.data.motion import articulation_tracks
    from streamchar.data.phonemes import PHONEMES, SILENCE_ID

    ids = np.asarray(phoneme_ids)
    segments, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or ids[t] != ids[start]:
            if ids[start] != SILENCE_ID:
                segments.append((PHONEMES[int(ids[start])], start / fps, t / fps))
            start = t
    tracks, _ = articulation_tracks(segments, len(ids), fps)
    return tracks["open"]
