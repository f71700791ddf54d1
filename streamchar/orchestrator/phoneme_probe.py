"""A frame phoneme probe over audio latents: the orchestrator's pointer re-alignment reads generated speech
with it (``Orchestrator.realign``).

A small MLP sees each audio token with ``context`` neighbours either side and predicts its phoneme (id 0,
silence, doubles as the CTC blank of :func:`streamchar.orchestrator.pointer.ctc_align`). It is trained on
the latent cache's ground-truth speech only (per-token ``phoneme_ids``), never on generated audio. Stage 2
uses it only when no evaluation recognizer is found (``distill.phoneme_reader``); the recognizer serves the
same :class:`~streamchar.orchestrator.pointer.PhonemeProbe` protocol through
:class:`streamchar.orchestrator.reader.LatentPhonemeReader`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamchar.data.latents import LatentCache
from streamchar.data.phonemes import PHONEMES


class FramePhonemeProbe(nn.Module):
    def __init__(
        self, audio_dim: int, context: int = 2, hidden: int = 256, classes: int = len(PHONEMES)
    ) -> None:
        super().__init__()
        self.context = context
        self.net = nn.Sequential(
            nn.Linear(audio_dim * (2 * context + 1), hidden), nn.GELU(), nn.Linear(hidden, classes)
        )

    def _windows(self, audio: torch.Tensor) -> torch.Tensor:
        """``[..., T, D]`` -> ``[..., T, (2c + 1) D]``: each token with ``c`` neighbours either side (edges
        repeat the end tokens; each item of a batch on its own)."""
        c = self.context
        first, last = audio[..., :1, :], audio[..., -1:, :]
        grow = (*audio.shape[:-2], c, audio.shape[-1])
        padded = torch.cat([first.expand(grow), audio, last.expand(grow)], dim=-2)
        return padded.unfold(-2, 2 * c + 1, 1).transpose(-2, -1).flatten(-2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Logits ``[T, C]`` of ``[T, D]`` latents, or ``[B, T, C]`` of ``[B, T, D]`` (each item on its own)."""
        return self.net(self._windows(audio.float()))

    @torch.no_grad()
    def log_probs(self, audio_latents: torch.Tensor) -> torch.Tensor:
        """``[T_a, D_a]`` -> ``[T_a, num_phonemes]`` log-probabilities (the ``PhonemeProbe`` protocol)."""
        return torch.log_softmax(self(audio_latents.cpu()), dim=-1)


def _tokens(cache: LatentCache, split: str, probe: FramePhonemeProbe, limit: int):
    xs, ys = [], []
    for entry in cache.entries(split)[:limit]:
        audio = cache.tensor(entry, "audio").float()
        xs.append(probe._windows(audio))
        ys.append(cache.tensor(entry, "phoneme_ids").long()[: len(audio)])
    return torch.cat(xs), torch.cat(ys)


def fit_phoneme_probe(cache: LatentCache | str | Path, steps: int = 600, seed: int = 0, max_clips: int = 400):
    """Train on the cache's train split; returns ``(probe, {"train_accuracy", "test_accuracy"})``."""
    cache = cache if isinstance(cache, LatentCache) else LatentCache(cache)
    torch.manual_seed(seed)
    dim = cache.tensor(cache.entries()[0], "audio").shape[1]
    probe = FramePhonemeProbe(dim)
    x, y = _tokens(cache, "train", probe, max_clips)
    opt = torch.optim.AdamW(probe.net.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (1024,), generator=g)
        loss = nn.functional.cross_entropy(probe.net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.eval()
    scores = {}
    with torch.no_grad():
        scores["train_accuracy"] = float((probe.net(x).argmax(1) == y).float().mean())
        split = "test" if cache.entries("test") else "train"
        tx, ty = _tokens(cache, split, probe, max_clips)
        scores["test_accuracy"] = float((probe.net(tx).argmax(1) == ty).float().mean())
    return probe.requires_grad_(False), {k: round(v, 4) for k, v in scores.items()}


def chance_accuracy(cache: LatentCache) -> float:
    """The accuracy of always answering the most frequent phoneme (silence), for comparison."""
    ys = np.concatenate([cache.tensor(e, "phoneme_ids").numpy() for e in cache.entries("test")[:400]])
    return float(np.bincount(ys).max() / len(ys))
