"""Latents to frames and PCM: the decode half of a chunk, kept apart so it can run elsewhere.

A session hands each denoised chunk's latents to a :class:`ChunkDecoder`, which owns the session's
streaming decoders (the causal video decoder's feature cache, the audio decoder's context) and returns
host arrays. :class:`LocalDecoder` decodes on the engine's device, on a second CUDA stream when the
session overlaps decoding with the next chunk's denoising, and copies the results to the host through
pinned memory. :mod:`streamchar.engine.disagg` provides the same interface for decoders on another GPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import numpy as np
import torch
from torch.profiler import record_function


class ChunkDecoder(Protocol):
    """One session's decoders (their streaming state carries from one chunk to the next)."""

    def decode(
        self, video: torch.Tensor, audio: torch.Tensor | None, ready: torch.cuda.Event | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Latents of one chunk -> ``(frames uint8 [T, H, W * B, 3], wave float32 [N] or None)``.

        ``video`` ``[B, C, L, h, w]``, ``audio`` ``[B, L_a, D_a]`` (None: the speech was given, decode
        only video); ``ready`` is recorded on the stream that produced the latents (CUDA only). The
        characters' waves are summed (only the speaker's is not silent).
        """
        ...

    def close(self) -> None: ...


class LocalDecoder:
    """Decoders on the engine's device.

    Args:
        engine: the shared codecs, device and precision.
        characters: how many characters the session plays (one video decoder each).
        audio_context_tokens: the streaming audio decoder's context (None: decode each chunk alone).
        side_stream: decode on a CUDA stream of its own (the session's decode overlap on CUDA).
        pinned: copy results to the host through pinned memory (CUDA).
    """

    def __init__(self, engine, characters: int, audio_context_tokens: int | None, side_stream: bool = False,
                 pinned: bool = True) -> None:  # fmt: skip
        self.engine = engine
        cuda = engine.device.type == "cuda"
        self.video_streams = [engine.video_codec.decoder_stream() for _ in range(characters)]
        codec = engine.audio_codec
        self.audio_stream = (
            codec.decoder_stream(audio_context_tokens)
            if audio_context_tokens is not None and hasattr(codec, "decoder_stream")
            else None
        )
        self.cuda_stream = torch.cuda.Stream(engine.device) if (side_stream and cuda) else None
        self.pinned = pinned and cuda
        self._host: dict[str, torch.Tensor] = {}  # reused pinned buffers, one per output

    @torch.no_grad()
    def decode(self, video, audio, ready=None):
        stream = torch.cuda.stream(self.cuda_stream) if self.cuda_stream is not None else nullcontext()
        with stream:
            if ready is not None and self.cuda_stream is not None:
                self.cuda_stream.wait_event(ready)
            frames, wave = self.decode_on_device(video, audio)
            with record_function("streamchar.to_host"):
                frames_host = self._to_host("frames", frames)  # [T, H, W * B, 3]
                wave_host = self._to_host("wave", wave) if wave is not None else None
        return frames_host, wave_host

    @torch.no_grad()
    def decode_on_device(
        self, video: torch.Tensor, audio: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`decode` on the current stream, results left on the device: frames uint8
        ``[T, H, W * B, 3]``, wave float32 ``[N]`` or None (what a decoder server sends on as it is)."""
        eng = self.engine
        with eng.autocast():
            with record_function("streamchar.decode_video"):
                frames = torch.cat([s.decode(video[b]) for b, s in enumerate(self.video_streams)], dim=2)
            wave = None
            if audio is not None:
                with record_function("streamchar.decode_audio"):
                    if self.audio_stream is not None:
                        wave = self.audio_stream.decode(audio)
                    else:
                        wave = eng.audio_codec.decode(audio)
                    wave = wave.float().sum(0).clamp(-1, 1)
        return frames, wave

    def _to_host(self, name: str, tensor: torch.Tensor) -> np.ndarray:
        """A host copy; on CUDA through a pinned buffer (an asynchronous DMA, then one host copy out, since
        the buffer is reused while the caller may keep the array)."""
        if not self.pinned or tensor.device.type != "cuda":
            return tensor.cpu().numpy()
        buffer = self._host.get(name)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = self._host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        buffer.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(tensor.device).synchronize()
        return buffer.numpy().copy()

    def close(self) -> None:
        self.video_streams, self.audio_stream, self._host = [], None, {}
