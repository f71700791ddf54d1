"""What a session hands out (:class:`Chunk`), and the per-chunk plan helpers it uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamchar.engine.clock import ChunkTiming
from streamchar.orchestrator.session import AudioConditions
from streamchar.timeline import Timeline


class SessionClosed(RuntimeError):
    """The session was closed (or failed); start a new one."""


@dataclass(frozen=True)
class Chunk:
    """One finished chunk: what a player shows and plays for ``timing.duration`` seconds.

    ``frames`` uint8 ``[T, H, W, 3]`` (characters side by side), ``audio`` float32 ``[N]`` mono at the
    timeline's rate (``N = T * samples_per_video_frame``), ``speaker`` ``[T]`` whose turn each frame is
    (-1 while listening), ``speaking`` ``[T]`` bool.
    """

    index: int
    frames: np.ndarray
    audio: np.ndarray
    speaker: np.ndarray
    speaking: np.ndarray
    timing: ChunkTiming
    conditions: AudioConditions | None = None

    @property
    def listening(self) -> bool:
        return not bool(self.speaking.any())


def padded_plan(plan: AudioConditions, frames: int) -> AudioConditions:
    """``plan`` extended to ``frames`` frames of listening (silence, pointer held)."""
    pad = frames - len(plan.units)

    def extend(x, value):
        return torch.cat([x, torch.full((pad,), value, dtype=x.dtype)])

    return AudioConditions(
        units=extend(plan.units, 0), pointer=extend(plan.pointer, int(plan.pointer[-1])),
        speaking=extend(plan.speaking, False), speaker=extend(plan.speaker, -1), held=extend(plan.held, False),
        turn_ends=plan.turn_ends, done=plan.done, word=extend(plan.word, -1) if plan.word is not None else None,
    )  # fmt: skip


def frame_roles(
    timeline: Timeline, plan: AudioConditions | None, frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(speaker [frames], speaking [frames])`` of a chunk's video frames, read off its plan at each frame's
    audio token (audio-driven, no plan: the one character, speaking)."""
    tokens = np.minimum(
        timeline.video_frames_to_audio_tokens(np.arange(frames)), timeline.chunk_audio_tokens - 1
    )
    if plan is not None:
        return plan.speaker.numpy()[tokens], plan.speaking.numpy()[tokens]
    return np.zeros(frames, np.int64), np.ones(frames, bool)
