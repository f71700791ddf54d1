"""The window: where every token sits (:class:`WindowLayout`: its segment and its rotary position), and what a
session or rollout remembers to fill it (:class:`WindowMemory`: the sink chunk and the motion frames).

A window is ``[reference | sink | motion | current]`` for video and
``[reference voice | sink audio | motion audio | current audio]`` for audio (DESIGN.md §8). Positions
are window-relative and the same for every window, so a session of any length never meets a position
it was not trained on. Times are in latent frames: the reference image sits at 0 with the reference
voice spread from 0 on the audio token grid; a gap; the sink; a gap; then motion frames immediately
followed by the current chunk (they are adjacent in time). Audio tokens take the spatial centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from streamchar.timeline import Timeline

SEGMENTS = ("reference", "sink", "motion", "current")
REFERENCE, SINK, MOTION, CURRENT = range(4)
GAP = 2.0  # latent frames between reference and sink, and between sink and motion


@dataclass(frozen=True)
class WindowLayout:
    """Segment start times and window-relative positions of video and audio tokens (see the module docstring)."""

    timeline: Timeline
    grid: tuple[int, int]  # video tokens per latent frame: (rows, columns) after patching

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def audio_step(self) -> float:
        """Latent frames between consecutive audio tokens."""
        return 1.0 / self.timeline.audio_tokens_per_latent_frame

    def segment_start(self, segment: int) -> float:
        tl = self.timeline
        reference_span = max(1.0, math.ceil(tl.reference_voice_tokens * self.audio_step))
        sink = reference_span + GAP
        motion = sink + tl.sink_latent_frames + GAP
        return (0.0, sink, motion, motion + tl.motion_latent_frames)[segment]

    def video_positions(self, segment: int, frames: int) -> torch.Tensor:
        """``[frames * rows * cols, 3]`` (time, row, column), frame-major."""
        rows, cols = self.grid
        t = torch.arange(frames, dtype=torch.float32) + self.segment_start(segment)
        grid = torch.stack(
            torch.meshgrid(t, torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                           indexing="ij"), dim=-1)  # fmt: skip
        return grid.reshape(-1, 3)

    def audio_positions(self, segment: int, tokens: int) -> torch.Tensor:
        """``[tokens, 3]``: time on the video timeline, at the spatial centre."""
        rows, cols = self.grid
        t = torch.arange(tokens, dtype=torch.float32) * self.audio_step + self.segment_start(segment)
        centre = torch.tensor([(rows - 1) / 2, (cols - 1) / 2]).expand(tokens, 2)
        return torch.cat([t[:, None], centre], dim=1)


class WindowMemory:
    """What a session's window remembers of the chunks generated so far (DESIGN.md §8): the sink chunk (the
    first chunk's first ``S`` latent frames, taken once) and the motion frames (the last chunk's last ``M``
    latent frames), each with its audio. Latents: video ``[B, C, T, h, w]``, audio ``[B, T_a, D_a]``.

    One per session (the engine) or rollout: :meth:`push` each finished chunk, :meth:`advance` before the
    next one to learn what enters the window.
    """

    def __init__(self, timeline: Timeline, use_sink: bool = True, use_motion: bool = True) -> None:
        self.timeline = timeline
        self.use_sink, self.use_motion = use_sink, use_motion
        self.sink: tuple[torch.Tensor, torch.Tensor] | None = None  # the sink chunk's latents
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # the last chunk's latents
        self._sink_taken = False

    def push(self, video: torch.Tensor, audio: torch.Tensor) -> None:
        """Remember a finished chunk's latents: its frames enter the window before the next chunk."""
        self.last = (video, audio)

    def advance(
        self,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """Before a chunk: ``(sink, motion)`` entering the window now, each ``(video, audio)`` or None. The
        sink enters once, after the first chunk; the motion frames after every chunk."""
        if self.last is None:
            return None, None
        new_sink = None
        if not self._sink_taken and self.use_sink:
            video, audio = self.last
            self.sink = new_sink = (video[:, :, : self.timeline.sink_latent_frames],
                                    audio[:, : self.timeline.sink_audio_tokens])  # fmt: skip
        self._sink_taken = True
        return new_sink, self.motion

    @property
    def motion(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The motion frames ``(video [B, C, M, h, w], audio [B, M_a, D_a])``; None before the first chunk or
        without motion frames."""
        if self.last is None or not self.use_motion:
            return None
        video, audio = self.last
        return video[:, :, -self.timeline.motion_latent_frames :], audio[
            :, -self.timeline.motion_audio_tokens :
        ]

    def prior_context(self, reference: torch.Tensor, audio_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What the video prior continues from: ``(last latent frame [B, C, h, w], motion audio [B, M_a,
        D_a])``; the ``reference`` frame and silence before the first chunk or without motion frames."""
        motion = self.motion
        if motion is None:
            tokens = self.timeline.motion_audio_tokens
            return reference, torch.zeros(reference.shape[0], tokens, audio_dim, device=reference.device)
        return self.last[0][:, :, -1], motion[1]

    def nbytes(self) -> int:
        """Bytes of the last chunk's latents. Not counted: the sink, a view that keeps the first chunk's latents
        alive (a constant once taken)."""
        return sum(t.numel() * t.element_size() for t in self.last) if self.last else 0
