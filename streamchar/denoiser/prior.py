"""The priors: small deterministic networks that carry a chunk's content, which the DiT only refines.

Regression learns what a chunk must say and show (the words, the lip shapes) in minutes on a CPU, where the
DiT alone from noise did not learn it in hours (DESIGN.md section 7). So every chunk first gets prior means

- ``mu_audio`` ``[B, L_a, D_a]`` from :class:`AcousticPrior`: the chunk's frame-aligned units (phoneme x F0
  bucket) and speaking flag, with ``context`` tokens of the units before the chunk, FiLM-modulated by a
  speaker vector pooled over the reference voice;
- ``mu_video`` ``[B, C, L, h, w]`` from :class:`VideoPrior`: the change from the last motion latent (the
  reference latent at a session's start) for each latent frame of the chunk, from the chunk's audio latents
  (``mu_audio`` when speaking from text, the given speech when audio-driven), FiLM-modulating a small conv
  U-Net over ``[reference | last motion latent]``;

and the DiT denoises around them (:mod:`streamchar.denoiser.residual`).

Both are chunk-local: a chunk's means depend on that chunk and what came before it, never on what comes
after, so streamed output equals offline output by construction and the orchestrator needs no look-ahead.
The acoustic prior is bidirectional inside its window (context + chunk) and sees nothing past the chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean_std(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, T, W]`` pooled over the valid steps ``valid [B, T]`` -> ``[B, 2W]`` (mean, standard deviation)."""
    w = valid.to(x.dtype)[..., None]
    count = w.sum(1).clamp_min(1.0)
    mean = (x * w).sum(1) / count
    var = ((x - mean[:, None]).pow(2) * w).sum(1) / count
    return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)


class SpeakerEncoder(nn.Module):
    """A speaker vector ``[B, S]`` from reference-voice latents ``[B, R, D_a]`` (convolutions, then the mean
    and standard deviation over the valid tokens). An item with no valid token gets the learned null vector."""

    def __init__(self, audio_dim: int, width: int, speaker_dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(audio_dim, width, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.GELU(),
        )
        self.out = nn.Linear(2 * width, speaker_dim)
        self.null = nn.Parameter(torch.zeros(speaker_dim))

    def forward(self, ref_voice: torch.Tensor, ref_valid: torch.Tensor) -> torch.Tensor:
        h = self.convs(ref_voice.transpose(1, 2)).transpose(1, 2)  # [B, R, W]
        vector = self.out(masked_mean_std(h, ref_valid))
        return torch.where(ref_valid.any(1, keepdim=True), vector, self.null.to(vector))


class FiLMBlock(nn.Module):
    """Residual dilated 1-D convolution block, its normalised activations scaled and shifted by a vector."""

    def __init__(
        self, width: int, cond_dim: int, dilation: int, kernel: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.dropout = nn.Dropout(dropout)  # on the update, in training only
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * width) if cond_dim else None
        self.out = nn.Linear(width, width)
        if self.film is not None:  # starts unmodulated
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, T, W]``; ``cond`` ``[B, cond_dim]`` (None for a block built without one)."""
        h = self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2))
        if self.film is not None:
            scale, shift = self.film(cond)[:, None].chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        return x + self.out(self.dropout(F.gelu(h)))


class AcousticPrior(nn.Module):
    """Units + speaking flag + reference voice -> the prior mean of the audio latents (see the module
    docstring). ``context`` tokens of units before the chunk are read; the rest of the window is the chunk.

    ``unit_buckets`` > 0 (the F0 buckets per phoneme, units being ``phoneme * unit_buckets + bucket``) adds a
    phoneme embedding and an F0-bucket embedding to the unit's own, so what a phoneme sounds like is learned
    from all its pitches at once instead of once per (phoneme, bucket) pair. ``dropout`` drops features of
    each block's update while training (held-out voices and sentences are what it is judged on)."""

    def __init__(self, *, num_units: int, audio_dim: int, context: int, width: int = 256,
                 speaker_dim: int = 128, dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8),
                 unit_buckets: int = 0, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if unit_buckets < 0 or (unit_buckets and num_units % unit_buckets):
            raise ValueError(f"unit_buckets ({unit_buckets}) must be 0 or divide num_units ({num_units}).")
        self.num_units, self.audio_dim, self.context = num_units, audio_dim, context
        self.unit_buckets = unit_buckets
        self.unit_embedding = nn.Embedding(num_units + 1, width)  # the last unit: padding before a session
        if unit_buckets:  # padding maps to phoneme num_units // unit_buckets (one past the last), bucket 0
            self.phoneme_embedding = nn.Embedding(num_units // unit_buckets + 1, width)
            self.bucket_embedding = nn.Embedding(unit_buckets, width)
        self.speaking_embedding = nn.Embedding(3, width)
        self.speaker = SpeakerEncoder(audio_dim, width, speaker_dim)
        self.blocks = nn.ModuleList(FiLMBlock(width, speaker_dim, d, dropout=dropout) for d in dilations)
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, audio_dim)

    def forward(self, units: torch.Tensor, speaking: torch.Tensor, ref_voice: torch.Tensor,
                ref_valid: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Prior means of the whole window.

        Args:
            units: ``[B, T]`` long; ``num_units`` (or any negative value) marks positions before a session's
                start.
            speaking: ``[B, T]`` long (0 / 1; 2 = unknown).
            ref_voice: ``[B, R, D_a]`` reference-voice latents, ``ref_valid`` ``[B, R]``.

        Returns:
            ``[B, T, D_a]``.
        """
        # 1. speaker vector from the reference voice
        speaker = self.speaker(ref_voice, ref_valid)  # [B, S]
        # 2. frame embeddings (negative units: before the session), then dilated convolutions modulated by
        # the speaker
        units = torch.where(units < 0, torch.full_like(units, self.num_units), units)
        x = self.unit_embedding(units) + self.speaking_embedding(speaking)  # [B, T, W]
        if self.unit_buckets:
            x = x + self.phoneme_embedding(units // self.unit_buckets)
            x = x + self.bucket_embedding(units % self.unit_buckets)
        for block in self.blocks:
            x = block(x, speaker)
        # 3. latent frames
        return self.out(self.out_norm(x))

    def chunk_mean(self, units: torch.Tensor, speaking: torch.Tensor, ref_voice: torch.Tensor,
                   ref_valid: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``[B, context + L_a]`` units and speaking (the chunk last) -> the chunk's means ``[B, L_a, D_a]``."""
        if units.shape[1] <= self.context:
            raise ValueError(
                f"The acoustic prior reads {self.context} context tokens before the chunk; got a window of "
                f"{units.shape[1]} tokens."
            )
        return self(units, speaking, ref_voice, ref_valid)[:, self.context :]

    def pad_context(self, units: torch.Tensor, speaking: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A chunk's ``[B, L_a]`` units and speaking with ``context`` start-of-session padding before them."""
        b = units.shape[0]
        pad_units = torch.full((b, self.context), self.num_units, dtype=units.dtype, device=units.device)
        pad_speaking = torch.zeros((b, self.context), dtype=speaking.dtype, device=speaking.device)
        return torch.cat([pad_units, units], 1), torch.cat([pad_speaking, speaking], 1)


class _ResBlock2d(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, with an optional per-item FiLM in between."""

    def __init__(self, channels: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * channels) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None and cond is not None:
            scale, shift = self.film(cond)[..., None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class VideoPrior(nn.Module):
    """Reference latent + last motion latent + the chunk's audio latents -> the prior mean of the chunk's
    video latents (see the module docstring).

    The U-Net's encoder runs once per chunk over ``[reference | last]``; its decoder runs per latent frame,
    FiLM-modulated by that frame's audio features, and predicts the change from the last latent."""

    def __init__(self, *, latent_channels: int, audio_dim: int, audio_per_frame: int, motion_audio: int,
                 channels: tuple[int, int, int] = (32, 64, 96), audio_width: int = 128) -> None:  # fmt: skip
        super().__init__()
        self.latent_channels, self.audio_dim = latent_channels, audio_dim
        self.audio_per_frame, self.motion_audio = audio_per_frame, motion_audio
        c1, c2, c3 = channels
        # audio: per-token features over [motion audio | chunk audio], pooled per latent frame
        self.audio_in = nn.Linear(audio_dim, audio_width)
        self.audio_blocks = nn.ModuleList(FiLMBlock(audio_width, 0, d) for d in (1, 2, 4))
        self.frame_out = nn.Sequential(
            nn.LayerNorm(audio_width), nn.Linear(audio_width, audio_width), nn.SiLU()
        )
        # encoder over [reference | last] (once per chunk)
        self.enc_in = nn.Conv2d(2 * latent_channels, c1, 3, padding=1)
        self.enc1 = _ResBlock2d(c1)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.enc2 = _ResBlock2d(c2)
        self.down2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.enc3 = _ResBlock2d(c3)
        # decoder (per latent frame, FiLM from its audio features)
        self.dec3 = _ResBlock2d(c3, audio_width)
        self.up2 = nn.Conv2d(c3, c2, 3, padding=1)
        self.dec2 = _ResBlock2d(c2, audio_width)
        self.up1 = nn.Conv2d(c2, c1, 3, padding=1)
        self.dec1 = _ResBlock2d(c1, audio_width)
        self.out_norm = nn.GroupNorm(8, c1)
        self.out = nn.Conv2d(c1, latent_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as "the chunk repeats the last latent"
        nn.init.zeros_(self.out.bias)

    def audio_features(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, M_a + L_a, D_a]`` -> per latent frame of the chunk ``[B, L, A]``."""
        x = self.audio_in(audio)
        for block in self.audio_blocks:
            x = block(x)
        x = x[:, self.motion_audio :]  # the chunk's tokens
        frames = x.shape[1] // self.audio_per_frame
        x = x[:, : frames * self.audio_per_frame].unflatten(1, (frames, self.audio_per_frame)).mean(2)
        return self.frame_out(x)

    def forward(self, reference: torch.Tensor, last: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The chunk's prior means.

        Args:
            reference: ``[B, C, h, w]`` the reference image's latent.
            last: ``[B, C, h, w]`` the last motion latent (the reference at a session's start).
            audio: ``[B, M_a + L_a, D_a]`` the motion audio (zeros at a session's start), then the chunk's.

        Returns:
            ``[B, C, L, h, w]``, ``L = L_a / audio_per_frame``.
        """
        # 1. per-frame audio features
        feats = self.audio_features(audio)  # [B, L, A]
        b, frames = feats.shape[:2]
        # 2. encoder over [reference | last], once per chunk
        e1 = self.enc1(self.enc_in(torch.cat([reference, last], 1)))  # [B, c1, h, w]
        e2 = self.enc2(self.down1(e1))  # [B, c2, h/2, w/2]
        e3 = self.enc3(self.down2(e2))  # [B, c3, h/4, w/4]

        # 3. decoder per latent frame (batch x frames), FiLM from the frame's audio
        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t[:, None].expand(-1, frames, *t.shape[1:]).flatten(0, 1)

        cond = feats.flatten(0, 1)  # [B * L, A]
        d3 = self.dec3(per_frame(e3), cond)
        d2 = self.dec2(self.up2(F.interpolate(d3, scale_factor=2.0, mode="nearest")) + per_frame(e2), cond)
        d1 = self.dec1(self.up1(F.interpolate(d2, scale_factor=2.0, mode="nearest")) + per_frame(e1), cond)
        delta = self.out(F.silu(self.out_norm(d1)))  # [B * L, C, h, w]
        delta = delta.unflatten(0, (b, frames)).transpose(1, 2)  # [B, C, L, h, w]
        return last[:, :, None] + delta


class Priors(nn.Module):
    """Both priors, frozen, and the means of a chunk from what a window (or a session) holds."""

    def __init__(self, audio: AcousticPrior, video: VideoPrior) -> None:
        super().__init__()
        self.audio, self.video = audio, video
        self.requires_grad_(False).eval()

    @property
    def context(self) -> int:
        """Tokens of units before the chunk the acoustic prior reads."""
        return self.audio.context

    def train(self, mode: bool = True) -> Priors:  # frozen: always in eval mode
        return super().train(False)

    @torch.no_grad()
    def audio_means(self, units: torch.Tensor, speaking: torch.Tensor, ref_voice: torch.Tensor,
                    ref_valid: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``[B, context + L_a]`` units / speaking (the chunk last) -> ``[B, L_a, D_a]``."""
        return self.audio.chunk_mean(units, speaking, ref_voice, ref_valid).float()

    @torch.no_grad()
    def video_means(self, reference: torch.Tensor, last: torch.Tensor, motion_audio: torch.Tensor,
                    chunk_audio: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``reference`` / ``last`` ``[B, C, h, w]``, ``motion_audio`` ``[B, M_a, D_a]`` (zeros at a session's
        start), ``chunk_audio`` ``[B, L_a, D_a]`` -> ``[B, C, L, h, w]``."""
        audio = torch.cat([motion_audio.to(chunk_audio.dtype), chunk_audio], dim=1)
        return self.video(reference, last, audio).float()

    @torch.no_grad()
    def window_means(
        self, batch: dict, audio_driven: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior means ``(video [B, C, L, h, w], audio [B, L_a, D_a])`` of a window batch
        (:class:`~streamchar.data.windows.WindowDataset` with ``unit_context = context``). Where
        ``audio_driven`` ``[B]`` is True the audio is given: its mean is the window's own audio."""
        units = torch.cat([batch["context_units"], batch["units"]], dim=1)
        speaking = torch.cat([batch["context_speaking"], batch["speaking"]], dim=1)
        mu_audio = self.audio_means(units, speaking, batch["ref_voice"], batch["ref_voice_mask"])
        if audio_driven is not None:
            mu_audio = torch.where(audio_driven.reshape(-1, 1, 1), batch["audio"].float(), mu_audio)
        reference = batch["ref_image"][:, :, 0]
        has_motion = batch["has_motion"].to(torch.bool)
        last = torch.where(has_motion.reshape(-1, 1, 1, 1), batch["motion_video"][:, :, -1], reference)
        motion_audio = batch["motion_audio"] * has_motion.to(batch["motion_audio"].dtype).reshape(-1, 1, 1)
        return self.video_means(reference, last, motion_audio, mu_audio), mu_audio
