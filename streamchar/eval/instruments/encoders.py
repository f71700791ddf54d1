"""Identity, voice and visual-quality instruments: encoders trained on the corpus's training identities.

- :class:`IdentityEncoder` maps a 64 x 64 frame (:func:`~streamchar.eval.metrics.features.face_views`) to a
  unit vector; the identity similarity of a generated frame is its cosine similarity to the reference
  image's vector.
  Its pooled convolutional features (before the projection) are the fixed features of the Fréchet
  distance (:func:`streamchar.eval.metrics.statistics.frechet_distance`), in the role Inception plays for FID.
- :class:`SpeakerEncoder` maps log-mel speech (any length over ~0.5 s) to a unit vector; voice similarity
  is the cosine similarity to the reference voice's vector.

Both are trained as classifiers over the training identities with a large-margin cosine (CosFace) head,
so that vectors of one identity cluster tightly; both prove themselves on identities never seen in
training (ROC AUC of same-vs-different pairs, :func:`streamchar.eval.metrics.statistics.pair_auc`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamchar.eval.instruments.base import fit, save_instrument
from streamchar.eval.metrics.features import MEL_FRAMES_PER_SECOND, EvalSplit, face_views
from streamchar.eval.metrics.statistics import pair_auc
from streamchar.loaders import load_instrument
from streamchar.orchestrator.reader import MEL_BANDS, SeparableBlock, log_mel
from streamchar.precision import instrument_inference

logger = logging.getLogger(__name__)


class CosineMarginHead(nn.Module):
    """CosFace: logits ``scale * (cos(theta) - margin * onehot)`` over unit-length class weights."""

    def __init__(self, dim: int, classes: int, scale: float = 16.0, margin: float = 0.2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        cos = embeddings @ nn.functional.normalize(self.weight, dim=-1).T  # [B, classes]
        logits = self.scale * (cos - self.margin * nn.functional.one_hot(labels, cos.shape[1]))
        accuracy = (cos.argmax(1) == labels).float().mean().item()
        return nn.functional.cross_entropy(logits, labels), accuracy


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.GELU()]


class IdentityEncoder(nn.Module):
    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(  # [B, 3, 64, 64]
            *_conv(3, w, 1), *_conv(w, 2 * w, 2), *_conv(2 * w, 3 * w, 2), *_conv(3 * w, 4 * w, 2),
            *_conv(4 * w, 6 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.feature_dim = 6 * w
        self.project = nn.Linear(6 * w, dim)

    def pooled(self, faces: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 64, 64, 3]`` -> the Fréchet features ``[B, 192]``."""
        return self.features(faces.permute(0, 3, 1, 2).float() / 127.5 - 1).float()

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 64, 64, 3]`` -> unit vectors ``[B, dim]``."""
        return nn.functional.normalize(self.project(self.pooled(faces)).float(), dim=-1)

    def embed_frames(self, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
        """RGB frames of any size ``uint8 [N, H, W, 3]`` -> unit vectors ``[N, dim]``."""
        faces = torch.from_numpy(face_views(frames))
        with instrument_inference():
            return torch.cat([self(faces[i : i + batch]) for i in range(0, len(faces), batch)]).float()

    def frechet_features(self, frames: np.ndarray, batch: int = 256) -> np.ndarray:
        faces = torch.from_numpy(face_views(frames))
        with instrument_inference():
            feats = [self.pooled(faces[i : i + batch]) for i in range(0, len(faces), batch)]
        return torch.cat(feats).double().numpy()


class SpeakerEncoder(nn.Module):
    def __init__(self, dim: int = 128, channels: int = 192, blocks: int = 4) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(MEL_BANDS, channels, 5, padding=2, stride=2), nn.GELU())
        self.blocks = nn.Sequential(*(SeparableBlock(channels, 9, 0.1) for _ in range(blocks)))
        self.project = nn.Linear(2 * channels, dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``[B, M, 80]`` log-mel -> unit vectors ``[B, dim]`` (mean and std pooled over time)."""
        x = self.blocks(self.front(mel.transpose(1, 2))).float()  # [B, C, T]
        stats = torch.cat([x.mean(-1), x.std(-1)], dim=-1)
        return nn.functional.normalize(self.project(stats).float(), dim=-1)

    def embed_audio(self, audio: np.ndarray) -> torch.Tensor:
        """16 kHz speech -> a unit vector ``[dim]``."""
        mel = log_mel(audio)
        if len(mel) < MEL_FRAMES_PER_SECOND // 2:
            raise ValueError(
                f"Speaker similarity needs at least 0.5 s of audio, got {len(mel) / MEL_FRAMES_PER_SECOND:.2f} s."
            )
        with instrument_inference():
            return self(mel[None])[0].float()


# -- training ------------------------------------------------------------------------------------------
def _labels(values: list) -> tuple[list[int], int]:
    index = {v: i for i, v in enumerate(sorted(set(values), key=str))}
    return [index[v] for v in values], len(index)


def _shift(faces: torch.Tensor, generator: torch.Generator, pixels: int = 4) -> torch.Tensor:
    """Random translation by up to ``pixels`` (edge padding) and random horizontal flips."""
    b, h, w, _ = faces.shape
    padded = nn.functional.pad(faces.permute(0, 3, 1, 2).float(), (pixels,) * 4, mode="replicate")
    out = torch.empty(b, 3, h, w)
    for i in range(b):
        dy, dx = torch.randint(0, 2 * pixels + 1, (2,), generator=generator).tolist()
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(b, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.permute(0, 2, 3, 1).round().to(torch.uint8)


def train_identity_encoder(split: EvalSplit, steps: int = 1200, batch: int = 64, run_dir: str | Path | None = None,
                           seed: int = 0) -> IdentityEncoder:  # fmt: skip
    face_clip = [i for i, c in enumerate(split.clips) for _ in range(c["faces"][1] - c["faces"][0])]
    labels, classes = _labels([split.clips[i]["char_id"] for i in face_clip])
    labels = torch.tensor(labels)
    torch.manual_seed(seed)
    model = IdentityEncoder()
    model.head = CosineMarginHead(128, classes)

    def loss_fn(generator: torch.Generator):
        picks = torch.randint(0, len(labels), (batch,), generator=generator)
        loss, accuracy = model.head(model(_shift(split.faces[picks], generator)), labels[picks])
        return loss, {"acc": accuracy}

    fit(model, loss_fn, steps, run_dir, lr=2e-3, desc="identity encoder", seed=seed)
    del model.head
    return model


def train_speaker_encoder(split: EvalSplit, steps: int = 1200, batch: int = 32, seconds: float = 2.0,
                          run_dir: str | Path | None = None, seed: int = 0) -> SpeakerEncoder:  # fmt: skip
    clips = split.monologues()
    if not clips:
        raise ValueError("The evaluation cache has no monologue with speech to train the speaker encoder on.")
    labels, classes = _labels([split.clips[i]["voice"] for i in clips])
    frames = int(seconds * MEL_FRAMES_PER_SECOND)
    torch.manual_seed(seed)
    model = SpeakerEncoder()
    model.head = CosineMarginHead(128, classes)

    def loss_fn(generator: torch.Generator):
        segments, targets = [], []
        for index in torch.randint(0, len(clips), (batch,), generator=generator).tolist():
            mel = split.clip_mel(clips[index])
            if len(mel) < frames:
                mel = torch.cat([mel, mel.flip(0)] * (frames // max(1, len(mel)) + 1))
            start = int(torch.randint(0, len(mel) - frames + 1, (1,), generator=generator))
            segments.append(mel[start : start + frames])
            targets.append(labels[index])
        mel = torch.stack(segments)
        mel = mel - mel.mean(1, keepdim=True)  # the segment's own normalisation, as at test time
        loss, accuracy = model.head(model(mel), torch.tensor(targets))
        return loss, {"acc": accuracy}

    fit(model, loss_fn, steps, run_dir, lr=2e-3, desc="speaker encoder", seed=seed)
    del model.head
    return model


# -- proof on held-out identities ------------------------------------------------------------------------
def evaluate_identity_encoder(model: IdentityEncoder, split: EvalSplit) -> dict:
    with instrument_inference():
        embeddings = torch.cat(
            [model(split.faces[i : i + 256]) for i in range(0, len(split.faces), 256)]
        ).float()
    face_clip = [i for i, c in enumerate(split.clips) for _ in range(c["faces"][1] - c["faces"][0])]
    labels = [split.clips[i]["char_id"] for i in face_clip]
    return {
        "identities": len(set(labels)),
        "faces": len(labels),
        "roc_auc": round(pair_auc(embeddings, labels, face_clip), 4),
    }


def evaluate_speaker_encoder(model: SpeakerEncoder, split: EvalSplit) -> dict:
    clips = split.monologues()
    with instrument_inference():
        embeddings = torch.stack([model(split.clip_mel(i)[None])[0] for i in clips]).float()
    labels = [split.clips[i]["voice"] for i in clips]
    return {
        "voices": len(set(labels)),
        "utterances": len(clips),
        "roc_auc": round(pair_auc(embeddings, labels), 4),
    }


def load_identity_encoder(folder: str | Path) -> IdentityEncoder:
    return load_instrument(folder, IdentityEncoder, "identity encoder")


def load_speaker_encoder(folder: str | Path) -> SpeakerEncoder:
    return load_instrument(folder, SpeakerEncoder, "speaker encoder")


def save_encoder(model: nn.Module, folder: str | Path, scores: dict, card: str) -> Path:
    return save_instrument(model, folder, {}, scores, card)
