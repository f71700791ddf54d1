"""Playback time and the per-session accounting (latencies, real-time factor, deadline misses).

The :class:`PlaybackClock` maps media time (seconds of the session's output) to wall time. Playback
starts when the first chunk is ready; chunk ``i`` must be ready by the wall time its first frame plays.
A chunk ready later is a deadline miss: the player stalls (rebuffers) for the difference, and every
later chunk's slot moves by as much. An offline render runs the same clock as if it were played, so
its misses say whether it would have kept up live.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class PlaybackClock:
    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.start: float | None = None  # wall time at which media time 0 plays (moves with stalls)
        self.stalled = 0.0

    @property
    def started(self) -> bool:
        return self.start is not None

    def schedule(self, media_start: float, ready: float) -> tuple[float, bool]:
        """Register a chunk that starts at ``media_start`` and was ready at wall time ``ready``; returns
        (its deadline, whether it missed it)."""
        if self.start is None:
            self.start = ready - media_start
        deadline = self.start + media_start
        if ready <= deadline:
            return deadline, False
        self.stalled += ready - deadline
        self.start += ready - deadline
        return deadline, True

    def wall_of(self, media_time: float) -> float:
        if self.start is None:
            raise RuntimeError("The clock starts with the first chunk.")
        return self.start + media_time

    def media_now(self) -> float:
        """Media time playing now (negative before playback reaches the session's start)."""
        return self.now() - self.start if self.start is not None else 0.0


@dataclass(frozen=True)
class ChunkTiming:
    """When one chunk was made, in wall-clock seconds (``time.perf_counter``) and media seconds."""

    index: int
    media_start: float
    duration: float
    started: float  # planning began
    denoised: float  # latents ready
    ready: float  # frames and audio decoded
    deadline: float  # wall time its first frame plays
    missed: bool

    @property
    def latency(self) -> float:
        """Planning to decoded frames: the chunk's own compute time, waiting for the device included."""
        return self.ready - self.started


def percentiles(values, qs=(50, 95, 99)) -> dict[str, float | None]:
    values = np.asarray(list(values), dtype=np.float64)
    return {f"p{q}": (float(np.percentile(values, q)) if len(values) else None) for q in qs}


class SessionStats:
    """Everything a session measures about itself; bounded however long it runs (recent values are kept
    for percentiles, totals are running sums)."""

    def __init__(self, keep: int = 8192) -> None:
        self.created = time.perf_counter()
        self.first_push: float | None = None
        self.time_to_first_frame: float | None = None  # first push (or session start) -> first frame ready
        self.chunks = 0
        self.deadline_misses = 0
        self.media_seconds = 0.0
        self.compute_seconds = 0.0  # sum of chunk latencies (overlapping chunks count twice)
        self.busy_seconds = 0.0  # the producer's time per chunk, waits for playback excluded
        self.chunk_latency: deque[float] = deque(maxlen=keep)
        # planning -> the step's work queued (on CUDA the device may still be busy: see sample_seconds)
        self.denoise_latency: deque[float] = deque(maxlen=keep)
        # the sampler's steps alone, per chunk (device time)
        self.sample_seconds: deque[float] = deque(maxlen=keep)
        self.tts_latency: deque[float] = deque(maxlen=keep)
        self.interrupts = 0
        self.realign_lag: deque[int] = deque(maxlen=keep)  # pointer ahead of the speech (tokens), per chunk

    def add_chunk(self, timing: ChunkTiming) -> None:
        if self.time_to_first_frame is None:
            self.time_to_first_frame = timing.ready - (self.first_push or self.created)
        self.chunks += 1
        self.deadline_misses += timing.missed
        self.media_seconds += timing.duration
        self.compute_seconds += timing.latency
        self.chunk_latency.append(timing.latency)
        self.denoise_latency.append(timing.denoised - timing.started)

    @property
    def real_time_factor(self) -> float | None:
        """Seconds the chunk loop is busy per second of media (below 1 keeps up). The loop's time per chunk
        is planning + denoising + waiting for the previous chunk's decode (overlap) or decoding it (no
        overlap); a live session's waits for playback are not counted."""
        return self.busy_seconds / self.media_seconds if self.media_seconds else None

    def summary(self) -> dict:
        def rounded(d):
            return {k: (round(v, 4) if v is not None else None) for k, v in d.items()}

        return {
            "chunks": self.chunks,
            "media_seconds": round(self.media_seconds, 3),
            "time_to_first_frame_s": round(self.time_to_first_frame, 4) if self.time_to_first_frame else None,
            "chunk_latency_s": rounded(percentiles(self.chunk_latency)),
            "denoise_latency_s": rounded(percentiles(self.denoise_latency)),
            "sample_s": rounded(percentiles(self.sample_seconds)),
            "text_to_speech_latency_s": rounded(percentiles(self.tts_latency, (50, 95)))
            | {"count": len(self.tts_latency)},
            "real_time_factor": round(self.real_time_factor, 4) if self.real_time_factor else None,
            "deadline_misses": self.deadline_misses,
            "interrupts": self.interrupts,
            "realign_lag_mean": round(float(np.mean(self.realign_lag)), 3) if self.realign_lag else None,
        }
