"""Where every token of a window sits: its segment and its rotary position.

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
