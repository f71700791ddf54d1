"""The runtime phoneme reader: speech (or audio latents) -> per-token phoneme log-probabilities, which the
orchestrator's pointer is realigned on (DESIGN.md section 6). Evaluation trains and scores the same model.

The acoustic model reads a fixed log-mel front-end (80 bands at 100 frames/s from a 25 ms window, independent
of the audio codec's own mel settings, so that it does not share the codec's blind spots), halves the rate
with a strided convolution and runs depthwise-separable residual convolutions (a QuartzNet-style stack, 1.6 s
of context) into a CTC head over the phoneme inventory, whose index 0 (silence) is the CTC blank.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
from torch import nn

from streamchar.data.phonemes import PHONEMES, SILENCE_ID
from streamchar.precision import instrument_inference
from streamchar.timeline import Timeline

SAMPLE_RATE = Timeline.sample_rate  # the reader hears speech at the timeline's default rate
MEL_HOP = 160  # 100 frames/s: four mel frames per 25 fps video frame
MEL_WINDOW = 400
MEL_BANDS = 80


# -- the front-end ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _mel_basis() -> torch.Tensor:
    import librosa

    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=MEL_WINDOW, n_mels=MEL_BANDS, fmin=20.0, fmax=7600.0)
    return torch.from_numpy(basis.astype(np.float32))


def log_mel(audio: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Log-mel frames ``[M, 80]`` (``M = N // 160``) of mono audio at 16 kHz, normalised per utterance
    to zero mean per band (so loudness and channel colour do not matter)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"The evaluation front-end reads {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample first."
        )
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32)).flatten()
    frames = wave.numel() // MEL_HOP
    if frames < 1:
        return torch.zeros(0, MEL_BANDS)
    spec = torch.stft(
        wave, MEL_WINDOW, MEL_HOP, MEL_WINDOW, torch.hann_window(MEL_WINDOW), center=True, return_complex=True
    ).abs()[:, :frames]  # [F, M]
    mel = torch.log(_mel_basis() @ spec.square() + 1e-6).T  # [M, 80]
    return mel - mel.mean(0, keepdim=True)


# -- the acoustic model ---------------------------------------------------------------------------
class SeparableBlock(nn.Module):
    """``x + pointwise(gelu(norm(depthwise(x))))`` over ``[B, C, T]``."""

    def __init__(self, channels: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.GroupNorm(1, channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.pointwise(nn.functional.gelu(self.norm(self.depthwise(x)))))


class CTCRecognizer(nn.Module):
    def __init__(self, channels: int = 256, blocks: int = 8, kernel: int = 11, dropout: float = 0.1) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(MEL_BANDS, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),  # 100 -> 50 frames/s
            nn.GELU(),
        )
        self.blocks = nn.Sequential(*(SeparableBlock(channels, kernel, dropout) for _ in range(blocks)))
        self.head = nn.Conv1d(channels, len(PHONEMES), 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``[B, M, 80]`` log-mel -> CTC logits ``[B, ceil(M / 2), num_phonemes]``."""
        x = self.front(mel.transpose(1, 2))  # [B, C, T]
        return self.head(self.blocks(x)).transpose(1, 2).float()

    @staticmethod
    def output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        return (mel_lengths + 1) // 2


def greedy_phonemes(log_probs: torch.Tensor) -> list[int]:
    """Best-path CTC decoding of ``[T, C]``: collapse repeats, drop blanks (silence)."""
    best = log_probs.argmax(-1).tolist()
    out, previous = [], SILENCE_ID
    for p in best:
        if p != previous and p != SILENCE_ID:
            out.append(p)
        previous = p
    return out


# -- the reader ------------------------------------------------------------------------------------
class WordDecoder(Protocol):
    """What turns a phoneme hypothesis into words (evaluation's lexicon); the runtime reader needs none."""

    def decode(self, phonemes: list[int], word_penalty: float = 1.0) -> list[str]: ...


class Recognizer:
    """The trained recognizer and its lexicon: audio -> phonemes and words."""

    def __init__(self, model: CTCRecognizer, lexicon: WordDecoder | None, word_penalty: float = 1.0,
                 scores: dict | None = None) -> None:  # fmt: skip
        self.model = model.eval().requires_grad_(False)
        self.lexicon = lexicon
        self.word_penalty = word_penalty
        self.scores = scores or {}

    def log_probs(self, audio: np.ndarray) -> torch.Tensor:
        """16 kHz audio -> CTC log-probabilities ``[T, num_phonemes]`` at 50 frames/s."""
        return self.mel_log_probs(log_mel(audio))

    def mel_log_probs(self, mel: torch.Tensor) -> torch.Tensor:
        """The same from the front-end's log-mel frames ``[M, 80]``."""
        if len(mel) < 2:
            return torch.zeros(0, len(PHONEMES))
        with instrument_inference():
            return torch.log_softmax(self.model(mel[None])[0], -1)

    def phonemes(self, audio: np.ndarray) -> list[int]:
        return greedy_phonemes(self.log_probs(audio))

    def words(self, audio: np.ndarray) -> list[str]:
        if self.lexicon is None:
            raise ValueError("This recognizer was saved without a lexicon; it reads phonemes only.")
        return self.lexicon.decode(self.phonemes(audio), self.word_penalty)

    def transcribe(self, audio: np.ndarray) -> str:
        return " ".join(self.words(audio))


class LatentPhonemeReader:
    """Serves the orchestrator's ``PhonemeProbe`` protocol from the recognizer: audio latents are decoded
    to speech by the audio codec, recognised, and the 50/s CTC posteriors averaged onto audio tokens."""

    def __init__(self, recognizer: Recognizer, audio_codec) -> None:
        self.recognizer = recognizer
        self.codec = audio_codec

    def log_probs(self, audio_latents: torch.Tensor) -> torch.Tensor:
        """Audio latents ``[T_a, D_a]`` -> log-probabilities ``[T_a, num_phonemes]`` per audio token."""
        wave = self.codec.decode(audio_latents.float().cpu()).numpy()
        return self.wave_log_probs(wave, audio_latents.shape[0])

    def wave_log_probs(self, wave: np.ndarray, tokens: int) -> torch.Tensor:
        """The same from speech already decoded (``tokens`` audio tokens of it)."""
        probs = self.recognizer.log_probs(wave).exp()  # [T, C]
        per_token = len(probs) / max(1, tokens)
        index = torch.clamp((torch.arange(len(probs)) / per_token).long(), max=tokens - 1)
        pooled = torch.zeros(tokens, probs.shape[1]).index_add_(0, index, probs)
        pooled = pooled / pooled.sum(-1, keepdim=True).clamp_min(1e-8)
        return pooled.clamp_min(1e-8).log()
