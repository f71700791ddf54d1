"""Pointer realignment in a text session: the orchestrator's pointer follows the speech actually generated.

The decode worker reads each spoken chunk's phonemes with the phoneme reader
(:class:`~streamchar.orchestrator.reader.LatentPhonemeReader`); before planning chunk ``j`` the producer moves
the pointer to where chunk ``j - 2``'s speech got (DESIGN.md section 6).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import torch

from streamchar.orchestrator.session import AudioConditions, Orchestrator
from streamchar.timeline import Timeline


def committed_rows(plan: AudioConditions, tokens: int) -> torch.Tensor:
    """Rows of the chunk's first ``tokens`` frames that the current turn committed to its pointer."""
    keep = ~plan.held[:tokens]
    if plan.turn_ends:
        keep[: max(plan.turn_ends) + 1] = False
    return keep


class Realigner:
    """One session's readings and plans: ``reader`` is the engine's phoneme reader (None: plans are recorded,
    nothing is read); ``lock`` the session's input lock, which the producer holds while it plans."""

    def __init__(self, reader, timeline: Timeline, lock: threading.RLock) -> None:
        self.reader = reader
        self.tl = timeline
        self._lock = lock
        self._progress: deque[tuple[int, torch.Tensor]] = deque()  # (chunk, phoneme log-probs) to realign on
        self._planned: dict[int, tuple[int, bool]] = {}  # chunk -> (frames the turn committed, a turn ended)

    def planned(self, index: int, plan: AudioConditions, playing: int) -> None:
        """Producer: chunk ``index`` was planned (``playing`` of its frames play)."""
        self._planned[index] = (int(committed_rows(plan, playing).sum()), bool(plan.turn_ends))

    def read(self, index: int, plan: AudioConditions | None, wave: np.ndarray) -> None:
        """Decode worker: read the phonemes of chunk ``index``'s speech for the next realignment; only the
        frames the current turn committed (not held, after any turn that ended in the chunk) are kept."""
        if plan is None or self.reader is None or not bool(plan.speaking.any()):
            return
        tokens = min(len(plan.units), self.tl.video_frames_to_audio_tokens(self.tl.chunk_video_frames(index)))
        log_probs = self.reader.wave_log_probs(wave[: self.tl.audio_tokens_to_samples(tokens)], tokens)
        with self._lock:
            self._progress.append((index, log_probs[committed_rows(plan, tokens)]))

    def realign(self, orchestrator: Orchestrator, next_index: int, lag: list) -> None:
        """Producer, before planning chunk ``j = next_index``: move the pointer to where chunk ``j - 2``'s speech
        got (the newest chunk whose decode has surely finished with decode overlap on, so the result never
        depends on thread timing, and is the same with overlap off). The frames chunk ``j - 1`` committed
        since are ``behind`` it; a turn that ended since makes the reading stale. Each move's lag goes to
        ``lag``."""
        while self._progress and self._progress[0][0] <= next_index - 2:
            index, log_probs = self._progress.popleft()
            later = [self._planned.get(i, (0, True)) for i in range(index + 1, next_index)]
            if len(log_probs) and not any(ended for _, ended in later):
                behind = sum(committed for committed, _ in later)
                lag.append(orchestrator.realign(log_probs, behind=behind))
        for old in [i for i in self._planned if i < next_index - 2]:  # bounded however long the session
            del self._planned[old]
