"""The mel audio codec: log-mel frames packed so that one token spans one audio-token period.

With a 10 ms hop and 25 tokens per second, a token packs 4 consecutive 80-bin log-mel frames into
a 320-dim vector; mel frame ``m`` is centred on sample ``m * hop`` (``center=True``), so token
``k`` covers samples ``[k * 640, (k + 1) * 640)``. Decoding inverts the mel filterbank (the
pseudo-inverse, refined by non-negative least squares with multiplicative updates) and recovers
phase with fast Griffin-Lim (Perraudin et al., 2013), written on ``torch.stft`` / ``torch.istft``
so it runs batched and on a GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from streamchar.codecs.base import CodecError, as_wave_tensor
from streamchar.timeline import Timeline


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Slaney-normalised mel filterbank ``[n_mels, n_fft // 2 + 1]`` (librosa's construction)."""
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
    return torch.from_numpy(basis.astype(np.float32))


class MelCodec(nn.Module):
    """:class:`~streamchar.codecs.base.AudioCodec` over packed log-mel frames."""

    kind = "mel"

    def __init__(
        self,
        sample_rate: int = Timeline.sample_rate,
        samples_per_token: int = 640,
        n_mels: int = 80,
        n_fft: int = 1024,
        hop_length: int = 160,
        win_length: int = 1024,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        log_floor: float = 1e-5,
        log_mel_mean: float = -5.0,
        log_mel_std: float = 2.5,
        griffin_lim_iters: int = 32,
        griffin_lim_momentum: float = 0.99,
        mel_inversion_iters: int = 30,
    ) -> None:
        super().__init__()
        if samples_per_token % hop_length:
            raise CodecError(
                f"audio_codec.hop_length ({hop_length}) must divide the samples per audio token "
                f"({samples_per_token}); pick a hop such as 160 for 25 tokens/s at 16 kHz."
            )
        if f_max > sample_rate / 2:
            raise CodecError(
                f"audio_codec.f_max ({f_max}) is above the Nyquist frequency ({sample_rate / 2})."
            )
        self.sample_rate = sample_rate
        self.samples_per_token = samples_per_token
        self.frames_per_token = samples_per_token // hop_length
        self.n_mels, self.n_fft, self.hop_length, self.win_length = n_mels, n_fft, hop_length, win_length
        self.log_floor = log_floor
        self.log_mel_mean, self.log_mel_std = log_mel_mean, log_mel_std
        self.griffin_lim_iters = griffin_lim_iters
        self.griffin_lim_momentum = griffin_lim_momentum
        self.mel_inversion_iters = mel_inversion_iters
        self.latent_dim = self.frames_per_token * n_mels
        basis = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        self.register_buffer("mel_basis", basis, persistent=False)  # [n_mels, F]
        self.register_buffer("mel_inverse", torch.linalg.pinv(basis), persistent=False)  # [F, n_mels]
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    # -- spectra ----------------------------------------------------------------------------------
    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``[B, F, M]`` of ``[B, N]`` (centred frames)."""
        return torch.stft(
            wave, self.n_fft, self.hop_length, self.win_length, self.window, center=True, return_complex=True
        )

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(
            spec, self.n_fft, self.hop_length, self.win_length, self.window, center=True, length=length
        )

    def log_mel(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-mel frames ``[B, M, n_mels]`` (natural log of magnitude mel), ``M = N // hop``."""
        x = as_wave_tensor(wave).to(self.mel_basis.device)
        x = x.unsqueeze(0) if x.dim() == 1 else x
        frames = x.shape[-1] // self.hop_length
        mag = self.stft(x).abs()[..., :frames]  # [B, F, M]
        mel = torch.matmul(self.mel_basis, mag)  # [B, n_mels, M]
        return torch.log(mel.clamp_min(self.log_floor)).transpose(1, 2)

    # -- the AudioCodec protocol --------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[N]`` or ``[B, N]`` samples -> latents ``[T_a, D_a]`` or ``[B, T_a, D_a]``."""
        single = as_wave_tensor(wave).dim() == 1
        tokens = as_wave_tensor(wave).shape[-1] // self.samples_per_token
        if tokens == 0:
            raise CodecError(
                f"Audio of {as_wave_tensor(wave).shape[-1]} samples is shorter than one token "
                f"({self.samples_per_token} samples); give at least {self.samples_per_token / self.sample_rate:.2f} s."
            )
        logmel = self.log_mel(wave)[:, : tokens * self.frames_per_token]  # [B, M, n_mels]
        latents = (logmel - self.log_mel_mean) / self.log_mel_std
        latents = latents.reshape(latents.shape[0], tokens, self.latent_dim)
        return latents[0] if single else latents

    def latents_to_log_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, T_a, D_a]`` -> log-mel ``[B, T_a * frames_per_token, n_mels]``."""
        b, t, _ = latents.shape
        return (latents * self.log_mel_std + self.log_mel_mean).reshape(
            b, t * self.frames_per_token, self.n_mels
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents ``[T_a, D_a]`` or ``[B, T_a, D_a]`` -> waveform ``[N]`` or ``[B, N]``."""
        single = latents.dim() == 2
        lat = latents.unsqueeze(0) if single else latents
        if lat.shape[-1] != self.latent_dim:
            raise CodecError(f"Mel latents must have {self.latent_dim} dims, got {lat.shape[-1]}.")
        lat = lat.to(self.mel_basis.device).float()
        mel = self.latents_to_log_mel(lat).exp().transpose(1, 2)  # [B, n_mels, M]
        # one extra frame so the centred STFT of the output has a frame for every input frame
        mel = torch.cat([mel, mel[..., -1:]], dim=-1)
        magnitude = self.mel_to_magnitude(mel)  # [B, F, M + 1]
        length = lat.shape[1] * self.samples_per_token
        wave = self.griffin_lim(magnitude, length, generator)
        return wave[0] if single else wave

    def mel_to_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """Non-negative linear magnitude ``[B, F, M]`` whose mel projection best matches ``mel``
        ``[B, n_mels, M]``: the clamped pseudo-inverse, refined by multiplicative NNLS updates."""
        magnitude = torch.matmul(self.mel_inverse, mel).clamp_min(1e-6)
        basis_t = self.mel_basis.transpose(0, 1)  # [F, n_mels]
        numerator = torch.matmul(basis_t, mel)
        for _ in range(self.mel_inversion_iters):
            magnitude = (
                magnitude
                * numerator
                / (torch.matmul(basis_t, torch.matmul(self.mel_basis, magnitude)) + 1e-8)
            )
        return magnitude

    def griffin_lim(
        self,
        magnitude: torch.Tensor,
        length: int,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fast Griffin-Lim: phase that makes ``magnitude [B, F, M]`` a consistent STFT.

        ``prefix`` ``[B, P]``: samples the output must start with (audio already played); they are
        imposed at every iteration, so the phase of what follows continues them.
        """
        if generator is None:
            generator = torch.Generator(device=magnitude.device).manual_seed(0)
        phase = torch.rand(magnitude.shape, generator=generator, device=magnitude.device) * (2 * math.pi)
        angles = torch.polar(torch.ones_like(magnitude), phase)
        previous = torch.zeros_like(angles)
        alpha = self.griffin_lim_momentum / (1 + self.griffin_lim_momentum)
        for _ in range(self.griffin_lim_iters):
            wave = self.istft(magnitude * angles, length)
            if prefix is not None:
                wave = torch.cat([prefix, wave[:, prefix.shape[1] :]], dim=1)
            rebuilt = self.stft(wave)[..., : magnitude.shape[-1]]
            angles = rebuilt - alpha * previous  # momentum towards the last projection
            angles = angles / angles.abs().clamp_min(1e-8)
            previous = rebuilt
        return self.istft(magnitude * angles, length)

    def decoder_stream(self, context_tokens: int = 4) -> MelDecoderStream:
        return MelDecoderStream(self, context_tokens)


class MelDecoderStream:
    """Decodes a session's audio latents chunk by chunk, each chunk continuing the audio already emitted.

    Every chunk is decoded behind the last ``context_tokens`` tokens of the previous ones, whose emitted
    samples Griffin-Lim keeps fixed at every iteration: the new chunk's phase grows out of the old audio
    instead of starting from random phase, which would click at every chunk boundary.
    """

    def __init__(self, codec: MelCodec, context_tokens: int = 4) -> None:
        if context_tokens < 0:
            raise CodecError(f"context_tokens must be zero or more, got {context_tokens}.")
        self.codec = codec
        self.context_tokens = context_tokens
        self.reset()

    def reset(self) -> None:
        self._latents: torch.Tensor | None = None  # [B, <= context_tokens, D_a]
        self._wave: torch.Tensor | None = None  # their emitted samples [B, n * samples_per_token]
        self._chunks = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[T_a, D_a]`` or ``[B, T_a, D_a]`` -> the chunk's samples ``[N]`` or ``[B, N]``."""
        codec = self.codec
        single = latents.dim() == 2
        lat = (latents.unsqueeze(0) if single else latents).to(codec.mel_basis.device).float()
        if lat.shape[-1] != codec.latent_dim:
            raise CodecError(f"Mel latents must have {codec.latent_dim} dims, got {lat.shape[-1]}.")
        context = self._latents if self._latents is not None else lat[:, :0]
        full = torch.cat([context, lat], dim=1)
        mel = codec.latents_to_log_mel(full).exp().transpose(1, 2)
        mel = torch.cat([mel, mel[..., -1:]], dim=-1)
        magnitude = codec.mel_to_magnitude(mel)
        generator = torch.Generator(device=magnitude.device).manual_seed(self._chunks)
        wave = codec.griffin_lim(magnitude, full.shape[1] * codec.samples_per_token, generator, self._wave)
        out = wave[:, context.shape[1] * codec.samples_per_token :]
        keep = min(self.context_tokens, full.shape[1])
        self._latents = full[:, full.shape[1] - keep :] if keep else None
        self._wave = wave[:, wave.shape[1] - keep * codec.samples_per_token :] if keep else None
        self._chunks += 1
        return out[0] if single else out


def build_audio_codec(cfg, timeline) -> nn.Module:
    """The configured audio codec (``audio_codec.kind``)."""
    ac = cfg.audio_codec
    if ac.kind == "mel":
        return MelCodec(
            sample_rate=timeline.sample_rate,
            samples_per_token=timeline.samples_per_audio_token,
            n_mels=ac.n_mels,
            n_fft=ac.n_fft,
            hop_length=ac.hop_length,
            win_length=ac.win_length,
            f_min=ac.f_min,
            f_max=ac.f_max,
            log_floor=ac.log_floor,
            log_mel_mean=ac.log_mel_mean,
            log_mel_std=ac.log_mel_std,
            griffin_lim_iters=ac.griffin_lim_iters,
            griffin_lim_momentum=ac.griffin_lim_momentum,
            mel_inversion_iters=ac.mel_inversion_iters,
        )
    if ac.kind == "encodec":
        from streamchar.codecs.encodec import load_encodec_codec

        if not ac.path:
            raise CodecError(
                "audio_codec.kind is encodec but audio_codec.path is not set; point it at a local checkpoint."
            )
        return load_encodec_codec(ac.path, timeline)
    raise CodecError(f"Unknown audio codec kind '{ac.kind}'; use mel or encodec.")
