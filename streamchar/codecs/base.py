"""The codec seams: how video and audio become latents and back.

Latents handed to the denoiser are normalised (about zero mean, unit variance per channel); the
codecs own that normalisation and undo it when decoding.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


class CodecError(ValueError):
    """A codec checkpoint or input that cannot be used; the message says what to do."""


@runtime_checkable
class VideoCodec(Protocol):
    """Frames <-> normalised video latents.

    ``encode(frames uint8 [T, H, W, 3]) -> latents float [C, T', h, w]`` and ``decode`` back, with
    ``T' = timeline.video_frames_to_latent_frames(T)``.
    """

    kind: str
    temporal_factor: int
    spatial_factor: int
    latent_channels: int
    causal_first_frame: bool
    image_size: int

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def decoder_stream(self) -> VideoDecoderStream: ...


class VideoDecoderStream(Protocol):
    """Decodes a session's latents chunk by chunk, keeping a causal decoder's cache between chunks.

    ``decode(latents [C, t, h, w]) -> frames uint8 [T, H, W, 3]``; the concatenation over chunks
    equals :meth:`VideoCodec.decode` of the concatenated latents.
    """

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def reset(self) -> None: ...


@runtime_checkable
class AudioCodec(Protocol):
    """Waveform <-> normalised audio latents, one token per ``timeline.samples_per_audio_token``.

    ``encode(wave float [N]) -> latents [T_a, D_a]`` with ``T_a = N // samples_per_audio_token``;
    ``decode(latents [T_a, D_a]) -> wave float [T_a * samples_per_audio_token]``. Both accept a
    leading batch dimension.
    """

    kind: str
    sample_rate: int
    latent_dim: int
    samples_per_token: int

    def encode(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def frames_to_tensor(frames: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [-1, 1]."""
    if isinstance(frames, np.ndarray):
        # a read-only array (a decoded image's buffer) is copied: torch warns on tensors it cannot write
        frames = torch.from_numpy(np.ascontiguousarray(frames) if frames.flags.writeable else frames.copy())
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise CodecError(f"Frames must be [T, H, W, 3], got {list(frames.shape)}.")
    if frames.dtype != torch.uint8:
        raise CodecError(f"Frames must be uint8 RGB, got {frames.dtype}.")
    return frames.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_frames(images: torch.Tensor) -> torch.Tensor:
    """float ``[T, 3, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]``."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def as_wave_tensor(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if wave.dim() not in (1, 2):
        raise CodecError(f"Audio must be [N] or [B, N] samples, got {list(wave.shape)}.")
    return wave.float()
