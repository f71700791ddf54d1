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


# -- the mouth reader: mouth opening read from decoded frames ------------------------------------------
class MouthReader(torch.nn.Module):
    """A small CNN from the grey mouth window (:func:`~streamchar.eval.metrics.features.mouth_crops`) to mouth
    opening, trained on the training identities' ground truth; it reads generated video the way the latent
    probe reads latents, without trusting the video codec. Each window is normalised to zero mean and unit
    variance first, so a character's skin and lip brightness do not read as opening."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        from torch import nn

        w = width
        self.net = nn.Sequential(  # [B, 1, 24, 32]
            nn.Conv2d(1, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),  # 12 x 16
            nn.Conv2d(2 * w, 3 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 3 * w), nn.GELU(),  # 6 x 8
            nn.Conv2d(3 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.GELU(),  # 3 x 4
            nn.Flatten(), nn.Linear(4 * w * 12, 1),
        )  # fmt: skip

    def forward(self, mouths: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 24, 32]`` -> opening ``[B]``."""
        x = mouths.float().flatten(1)
        x = ((x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 4.0)).view(-1, 1, *mouths.shape[1:])
        return self.net(x)[:, 0].float()

    def predict(self, mouths: np.ndarray | torch.Tensor, batch: int = 1024) -> np.ndarray:
        from streamchar.precision import instrument_inference

        mouths = torch.as_tensor(np.asarray(mouths))
        with instrument_inference():
            return (
                torch.cat([self(mouths[i : i + batch]) for i in range(0, len(mouths), batch)]).float().numpy()
            )


def train_mouth_reader(mouths: torch.Tensor, mouth_open: torch.Tensor, steps: int = 1500, batch: int = 256,
                       run_dir=None, seed: int = 0) -> MouthReader:  # fmt: skip
    """Regress ``float [N]`` opening from ``uint8 [N, 24, 32]`` windows (mean squared error)."""
    from streamchar.eval.instruments.base import fit

    known = torch.isfinite(mouth_open.float())  # real videos carry no ground-truth opening
    if not bool(known.any()):
        raise ValueError(
            "No frame of the evaluation cache has a ground-truth mouth opening (only synthetic clips do)."
        )
    mouths, target = mouths[known], mouth_open.float()[known]
    torch.manual_seed(seed)
    model = MouthReader()

    def loss_fn(generator: torch.Generator):
        picks = torch.randint(0, len(mouths), (batch,), generator=generator)
        return torch.nn.functional.mse_loss(model(mouths[picks]), target[picks]), {}

    return fit(model, loss_fn, steps, run_dir, lr=2e-3, desc="mouth reader", seed=seed)


def load_mouth_reader(folder) -> MouthReader:
    from streamchar.loaders import load_instrument

    return load_instrument(folder, MouthReader, "mouth reader")


def planned_mouth_open(phoneme_ids: np.ndarray, fps: float) -> np.ndarray:
    """The mouth opening the synthetic renderer draws for a per-frame phoneme plan ``[T]`` (runs of one id
    become phonemes; 0 is silence), without its loudness emphasis: the "true" opening of a generated clip."""
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
