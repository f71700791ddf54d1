"""The one owner of every rate and frame count in StreamChar.

Video runs at ``fps`` frames per second and audio at ``sample_rate`` samples per second. The
video codec groups ``temporal_factor`` video frames into one latent frame; a causal codec
(Wan-style) gives the very first video frame a latent frame of its own. The audio codec emits
``audio_latent_rate`` tokens per second. The denoiser works on chunks of
``chunk_latent_frames`` latent frames, with ``motion_latent_frames`` of motion context and a sink
of ``sink_latent_frames``.

Every other module derives its sizes from a :class:`Timeline`; none hard-codes a rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Timeline:
    fps: int = 25
    sample_rate: int = 16000
    temporal_factor: int = 1
    causal_first_frame: bool = False
    audio_latent_rate: int = 25
    chunk_latent_frames: int = 12
    motion_latent_frames: int = 4
    sink_latent_frames: int = 12
    reference_voice_seconds: float = 3.0

    def __post_init__(self) -> None:
        for name in ("fps", "sample_rate", "temporal_factor", "audio_latent_rate", "chunk_latent_frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeline.{name} must be positive, got {getattr(self, name)}.")
        for name in ("motion_latent_frames", "sink_latent_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"timeline.{name} must be zero or more, got {getattr(self, name)}.")
        if self.sample_rate % self.fps:
            raise ValueError(
                f"timeline.sample_rate ({self.sample_rate}) must be a multiple of timeline.fps ({self.fps}) "
                "so that every video frame spans a whole number of audio samples."
            )
        if self.sample_rate % self.audio_latent_rate:
            raise ValueError(
                f"timeline.sample_rate ({self.sample_rate}) must be a multiple of "
                f"timeline.audio_latent_rate ({self.audio_latent_rate})."
            )
        tokens_per_latent = self.audio_latent_rate * self.temporal_factor / self.fps
        if tokens_per_latent != int(tokens_per_latent) or tokens_per_latent < 1:
            raise ValueError(
                "timeline.audio_latent_rate * timeline.temporal_factor / timeline.fps must be a whole number "
                f"of audio tokens per latent frame, got {tokens_per_latent:g}."
            )

    # -- derived rates ------------------------------------------------------------------------
    @property
    def samples_per_video_frame(self) -> int:
        return self.sample_rate // self.fps

    @property
    def samples_per_audio_token(self) -> int:
        return self.sample_rate // self.audio_latent_rate

    @property
    def audio_tokens_per_latent_frame(self) -> int:
        return self.audio_latent_rate * self.temporal_factor // self.fps

    @property
    def latent_fps(self) -> float:
        return self.fps / self.temporal_factor

    @property
    def chunk_seconds(self) -> float:
        """Playback time of one steady-state chunk (not the causal first one)."""
        return self.chunk_latent_frames * self.temporal_factor / self.fps

    @property
    def chunk_audio_tokens(self) -> int:
        return self.chunk_latent_frames * self.audio_tokens_per_latent_frame

    @property
    def motion_audio_tokens(self) -> int:
        return self.motion_latent_frames * self.audio_tokens_per_latent_frame

    @property
    def sink_audio_tokens(self) -> int:
        return self.sink_latent_frames * self.audio_tokens_per_latent_frame

    @property
    def reference_voice_tokens(self) -> int:
        return self.seconds_to_audio_tokens(self.reference_voice_seconds)

    # -- seconds <-> video frames <-> samples ---------------------------------------------------
    def seconds_to_video_frames(self, seconds: float) -> int:
        """Number of whole video frames that start before ``seconds`` (rounded to nearest)."""
        return int(round(seconds * self.fps))

    def video_frames_to_seconds(self, frames: int) -> float:
        return frames / self.fps

    def video_frames_to_samples(self, frames: int) -> int:
        return frames * self.samples_per_video_frame

    def samples_to_video_frames(self, samples: int) -> int:
        """Video frames fully covered by ``samples`` audio samples."""
        return samples // self.samples_per_video_frame

    def seconds_to_samples(self, seconds: float) -> int:
        return int(round(seconds * self.sample_rate))

    def samples_to_seconds(self, samples: int) -> float:
        return samples / self.sample_rate

    def video_frame_of_time(self, seconds: float) -> int:
        """Index of the video frame on screen at ``seconds`` (frame k spans [k/fps, (k+1)/fps))."""
        return int(math.floor(seconds * self.fps + 1e-9))

    # -- audio tokens ---------------------------------------------------------------------------
    def seconds_to_audio_tokens(self, seconds: float) -> int:
        return int(round(seconds * self.audio_latent_rate))

    def audio_tokens_to_seconds(self, tokens: int) -> float:
        return tokens / self.audio_latent_rate

    def audio_tokens_to_samples(self, tokens: int) -> int:
        return tokens * self.samples_per_audio_token

    def samples_to_audio_tokens(self, samples: int) -> int:
        return samples // self.samples_per_audio_token

    def video_frames_to_audio_tokens(self, frames: int) -> int:
        return frames * self.audio_latent_rate // self.fps

    # -- video frames <-> latent frames -----------------------------------------------------------
    def video_frames_to_latent_frames(self, frames: int) -> int:
        """Latent frames a codec produces for ``frames`` video frames.

        Per-frame codecs map one to one. A causal codec encodes frame 0 alone and then groups of
        ``temporal_factor``: ``1 + (frames - 1) // temporal_factor``. Frames beyond the last whole
        group are dropped, so callers should pass :meth:`valid_video_frames` counts.
        """
        if frames <= 0:
            return 0
        if self.causal_first_frame:
            return 1 + (frames - 1) // self.temporal_factor
        return frames // self.temporal_factor

    def latent_frames_to_video_frames(self, latent_frames: int) -> int:
        if latent_frames <= 0:
            return 0
        if self.causal_first_frame:
            return 1 + (latent_frames - 1) * self.temporal_factor
        return latent_frames * self.temporal_factor

    def valid_video_frames(self, frames: int) -> int:
        """The largest frame count <= ``frames`` that the codec encodes without dropping frames."""
        return self.latent_frames_to_video_frames(self.video_frames_to_latent_frames(frames))

    def latent_frame_span(self, latent_index: int) -> tuple[int, int]:
        """Video frames ``[start, end)`` decoded from latent frame ``latent_index`` of a session."""
        if self.causal_first_frame:
            if latent_index == 0:
                return 0, 1
            start = 1 + (latent_index - 1) * self.temporal_factor
        else:
            start = latent_index * self.temporal_factor
        return start, start + self.temporal_factor

    def chunk_video_frames(self, chunk_index: int) -> int:
        """Video frames decoded from chunk ``chunk_index`` of a session (the causal first one is shorter)."""
        first = chunk_index * self.chunk_latent_frames
        start, _ = self.latent_frame_span(first)
        _, end = self.latent_frame_span(first + self.chunk_latent_frames - 1)
        return end - start

    def latent_frames_to_audio_tokens(self, latent_frames: int) -> int:
        """Audio tokens that cover the same time as ``latent_frames`` latent frames of a session."""
        return self.video_frames_to_audio_tokens(self.latent_frames_to_video_frames(latent_frames))
