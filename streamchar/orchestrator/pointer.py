"""The progress-aware pointer: where speech is in the transcript, and what the next frame may be.

A turn's transcript phonemes become *positions* (consecutive equal phonemes share one position, so
a frame unit always says unambiguously whether speech stays or moves on). ``p`` counts the
positions started. Each frame may only be the current position's phoneme (stay), the next
position's phoneme (advance), or silence; ``<end>`` is allowed once the text is final and every
position has started. :class:`TurnPointer` also decides *when* text enters the LM's context, as a
function of the pointer alone, so the LM's token sequence never depends on how the text was split
into pushes:

- a word's tokens (its phonemes and the boundary after it) are inserted when speech enters the word
  before it (the first word at the start of the turn), and ``<eot>`` after the last word once the
  transcript is final;
- a word can be phonemised once the word after it has arrived (or the text is final);
- a frame whose unit would need a word that has not arrived is not committed: the pointer *holds*
  (a pause, outside the LM's context) and the same unit is committed once the text is there;
- before every frame the LM reads a *cue*: the phoneme the pointer would advance into (``<nil>`` when
  none is left), so deciding "stay or move on" is local and does not depend on the LM tracking its
  place in the text (a tiny LM without the cue lost its place inside unfamiliar words).

The same class replays corpus turns into training sequences (:func:`interleave_turn`), so training
and inference share one definition of the sequence. :func:`ctc_align` realigns the pointer from a
CTC phoneme probe's output over the audio actually generated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from streamchar.data.phonemes import SILENCE_ID
from streamchar.orchestrator.text import UnitVocabulary, Word

PhonemizeFn = Callable[[Word, "Word | None"], tuple[int, ...]]


@dataclass(frozen=True)
class PointerLimits:
    """Safety caps on runs, in frames: a phoneme held longer, or a silence longer, must move on."""

    max_phoneme_frames: int = 12
    max_silence_frames: int = 16

    @property
    def max_stall_frames(self) -> int:
        """Frames without moving on after which only moving on (or ending) is allowed: stay and
        silence alternating could otherwise last forever."""
        return self.max_phoneme_frames + self.max_silence_frames


UNCAPPED = PointerLimits(max_phoneme_frames=1 << 30, max_silence_frames=1 << 30)


class TurnPointer:
    """One turn's transcript, the pointer into it, and the text tokens owed to the LM.

    Words arrive with :meth:`add_words` (and :meth:`finish` once the transcript is final). Before
    each frame call :meth:`start_tokens` (once) and :meth:`allowed` ; after choosing a token call
    :meth:`can_commit` and, if True, :meth:`commit`, which returns the text tokens to append after it.
    Memory is bounded: words and positions behind the pointer are dropped.
    """

    def __init__(
        self,
        vocab: UnitVocabulary,
        phonemize: PhonemizeFn,
        speaker_token: int,
        tempo_token: int,
        limits: PointerLimits = PointerLimits(),
    ) -> None:
        self.vocab = vocab
        self.phonemize = phonemize
        self.prefix = [speaker_token, tempo_token]
        self.limits = limits
        self.final = False
        self.started = False
        self.ended = False
        # received words, indexed from self._word_base
        self._words: list[Word] = []
        self._word_base = 0
        self.inserted = 0  # words whose tokens are in the LM context
        self.eot_inserted = False
        # positions (phoneme ids) of inserted words, indexed from self._pos_base; and their word index
        self._positions: list[int] = []
        self._position_words: list[int] = []
        self._pos_base = 0
        self.p = 0  # positions started
        self.run = 0  # frames in the current state (same position, or silence)
        self.silent = True  # the last frame was silence (or none yet)
        self.frames = 0
        self.stalled = 0  # frames since speech last moved on

    # -- text side ---------------------------------------------------------------------------
    @property
    def received(self) -> int:
        return self._word_base + len(self._words)

    def add_words(self, words: Sequence[Word]) -> None:
        if self.final and words:
            raise ValueError("This turn's transcript is already final; start a new turn for more text.")
        self._words.extend(words)

    def finish(self) -> None:
        self.final = True

    def _word(self, k: int) -> Word:
        return self._words[k - self._word_base]

    def _insertable(self, k: int) -> bool:
        return k < self.received and (k + 1 < self.received or self.final)

    @property
    def num_positions(self) -> int:
        return self._pos_base + len(self._positions)

    def _position(self, i: int) -> int:
        return self._positions[i - self._pos_base]

    def _position_word(self, i: int) -> int:
        return self._position_words[i - self._pos_base]

    def current_word(self) -> int:
        return self._position_word(self.p - 1) if self.p > 0 else -1

    def _phonemes_of(self, k: int) -> tuple[int, ...]:
        following = self._word(k + 1) if k + 1 < self.received else None
        return self.phonemize(self._word(k), following)

    def _plan(self, p: int, cw: int) -> int | None:
        """How many words must be in the context for pointer ``p`` in word ``cw``: every word up to
        the one after ``cw``, and enough that a position after ``p`` exists (or the text ends).
        None if that needs text that has not arrived."""
        k, positions = self.inserted, self.num_positions
        last = self._positions[-1] if self._positions else None
        while k <= cw + 1 or positions <= p:
            if k >= self.received:
                return k if self.final else None
            if not self._insertable(k):
                return None
            for pid in self._phonemes_of(k):
                if pid != last:
                    positions, last = positions + 1, pid
            k += 1
        return k

    def _insert_word(self) -> list[int]:
        k = self.inserted
        phonemes = self._phonemes_of(k)
        for pid in phonemes:
            if self._positions and self._positions[-1] == pid:
                continue  # an equal neighbour shares the position
            self._positions.append(pid)
            self._position_words.append(k)
        self.inserted += 1
        return self.vocab.word_tokens(self._word(k), phonemes)

    def _settle(self) -> list[int] | None:
        """Insert the owed words (and ``<eot>`` after the last one of a final text); None, changing
        nothing, if the text is not there yet."""
        target = self._plan(self.p, self.current_word())
        if target is None:
            return None
        tokens: list[int] = []
        while self.inserted < target:
            tokens += self._insert_word()
        if self.final and self.inserted == self.received and not self.eot_inserted:
            tokens.append(self.vocab.eot)
            self.eot_inserted = True
        return tokens

    # -- frame side --------------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether the next frame can be predicted (the owed text is there)."""
        return self.started or self._plan(0, -1) is not None

    def start_tokens(self) -> list[int]:
        """The turn's opening tokens: speaker, tempo, the first word(s) and the first cue. Call once,
        when ready."""
        tokens = self._settle()
        if tokens is None:
            raise RuntimeError("start_tokens() called before ready(); wait for more text")
        self.started = True
        return self.prefix + tokens + [self.cue()]

    def cue(self) -> int:
        """The pointer cue the LM reads before a frame: the next position's phoneme, or ``<nil>``."""
        if self.p < self.num_positions:
            return self.vocab.phoneme(self._position(self.p))
        return self.vocab.no_next

    def moves(self) -> list[list[int]]:
        """The next frame's options grouped by what they do to the pointer: stay (the current phoneme,
        any F0 bucket), advance (the next phoneme), silence, ``<end>``; empty groups left out. This is
        the constraint every backend applies, and decoding picks a move before an F0 bucket."""
        v, size = self.vocab, self.vocab.buckets.size
        at_end = self.eot_inserted and self.p == self.num_positions
        groups: list[list[int]] = []
        stay_ok = self.p > 0 and not self.silent and self.run < self.limits.max_phoneme_frames
        if self.p > 0 and (self.silent or stay_ok):
            groups.append([v.unit(self._position(self.p - 1) * size + b) for b in range(size)])
        if self.p < self.num_positions:
            groups.append([v.unit(self._position(self.p) * size + b) for b in range(size)])
        if not at_end and not (self.silent and self.run >= self.limits.max_silence_frames and groups):
            groups.append([v.unit(SILENCE_ID * size)])
        if at_end:
            groups.append([v.end])
        if self.stalled >= self.limits.max_stall_frames:
            moving = [g for g in groups if g[0] == v.end or self.p < self.num_positions and
                      g[0] == v.unit(self._position(self.p) * size)]  # fmt: skip
            groups = moving or groups
        return groups

    def allowed(self) -> list[int]:
        """Token ids the next frame may take (all moves together)."""
        return sorted(t for group in self.moves() for t in group)

    def _after(self, token: int) -> tuple[int, bool]:
        """(p, silent) after ``token``."""
        unit = self.vocab.unit_of(token)
        if unit is None:
            return self.p, True
        phoneme = self.vocab.unit_phoneme(unit)
        if phoneme == SILENCE_ID:
            return self.p, True
        if (
            self.p < self.num_positions
            and phoneme == self._position(self.p)
            and (self.p == 0 or self.silent or phoneme != self._position(self.p - 1))
        ):
            return self.p + 1, False
        return self.p, False

    def can_commit(self, token: int) -> bool:
        """False if ``token`` would move speech into text that has not arrived: hold instead."""
        if token == self.vocab.end:
            return True
        p, _ = self._after(token)
        if p == self.p:
            return True
        return self._plan(p, self._position_word(p - 1)) is not None

    def commit(self, token: int) -> list[int]:
        """Apply ``token``; returns the tokens to append to the LM context after it (text owed, then
        the next frame's cue; nothing after ``<end>``)."""
        if token not in self.allowed():
            raise ValueError(f"token {token} is not allowed by the pointer here")
        if token == self.vocab.end:
            self.ended = True
            return []
        p, silent = self._after(token)
        moved = p != self.p
        self.run = self.run + 1 if (not moved and silent == self.silent) else 1
        self.stalled = 0 if moved else self.stalled + 1
        self.p, self.silent = p, silent
        self.frames += 1
        tokens = self._settle() if moved else []
        if tokens is None:
            raise ValueError("commit() of a frame that needs text not yet received; check can_commit first")
        self._trim()
        return tokens + [self.cue()]

    def jump(self, target: int) -> list[int] | None:
        """Move the pointer forward to ``target`` positions started (realignment), or as far towards it
        as the received text allows; returns the text tokens owed to the LM, None if it cannot move."""
        for q in range(min(target, self.num_positions), self.p, -1):
            if self._plan(q, self._position_word(q - 1)) is not None:
                self.p, self.silent, self.run, self.stalled = q, False, 1, 0
                tokens = self._settle()
                self._trim()
                return tokens + [self.cue()]
        return None

    def _trim(self) -> None:
        """Forget words and positions well behind the pointer."""
        keep_pos = self.p - 2
        if keep_pos - self._pos_base > 256:
            cut = keep_pos - self._pos_base
            del self._positions[:cut], self._position_words[:cut]
            self._pos_base += cut
        keep_word = self.current_word() - 1
        if keep_word - self._word_base > 256:
            cut = keep_word - self._word_base
            del self._words[:cut]
            self._word_base += cut

    @property
    def current_phoneme(self) -> int:
        return self._position(self.p - 1) if self.p > 0 else SILENCE_ID


def interleave_turn(
    vocab: UnitVocabulary,
    words: Sequence[Word],
    word_phonemes: Sequence[tuple[int, ...]],
    frame_units: Sequence[int],
    speaker: int,
    tempo_token: int,
) -> list[int]:
    """A corpus turn as the LM sees it at inference: the tokens a :class:`TurnPointer` would produce
    with the whole transcript available, taking ``frame_units`` as the generated frames, then
    ``<end>``. Raises ValueError if a frame breaks the pointer's rules."""
    words = [Word(w.text, w.boundary) for w in words]  # distinct objects: equal words may differ in phonemes
    by_id = {id(w): tuple(ph) for w, ph in zip(words, word_phonemes, strict=True)}

    def phonemize(word: Word, _next: Word | None) -> tuple[int, ...]:
        return by_id[id(word)]

    # the run caps are an inference-time safety net; recorded speech is replayed as it is
    pointer = TurnPointer(vocab, phonemize, vocab.speaker(speaker), tempo_token, UNCAPPED)
    pointer.add_words(words)
    pointer.finish()
    tokens = pointer.start_tokens()
    for unit in frame_units:
        token = vocab.unit(int(unit))
        if token not in pointer.allowed():
            raise ValueError(
                f"frame {pointer.frames}: unit {unit} breaks the pointer at position {pointer.p}"
            )
        tokens.append(token)
        tokens += pointer.commit(token)
    if vocab.end not in pointer.allowed():
        raise ValueError(f"the turn ends before its last phoneme ({pointer.p} of {pointer.num_positions})")
    return tokens + [vocab.end]


# -- constrained decoding ------------------------------------------------------------------------
def mask_logits(logits: torch.Tensor, allowed: Sequence[int]) -> torch.Tensor:
    """``logits`` ``[..., V]`` with every token outside ``allowed`` set to -inf."""
    mask = torch.full_like(logits, float("-inf"))
    mask[..., list(allowed)] = 0.0
    return logits + mask


def choose_move(
    logits: torch.Tensor,
    moves: Sequence[Sequence[int]],
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from ``logits`` ``[V]`` under the pointer's ``moves``: first the move (stay,
    advance, silence, end) by its total probability, then the token (F0 bucket) within it.

    Taking the single most likely token instead would favour whichever move spreads its probability
    over fewer F0 buckets (silence has one token, speech nine), which biases durations. ``temperature``
    0 is greedy at both levels; above 0 both levels are sampled.
    """
    logp = torch.log_softmax(mask_logits(logits.float(), [t for m in moves for t in m]), dim=-1)
    mass = torch.stack([torch.logsumexp(logp[list(m)], 0) for m in moves])
    if temperature <= 0:
        move = list(moves[int(mass.argmax())])
        return move[int(logp[move].argmax())]
    pick = int(torch.multinomial(torch.softmax(mass / temperature, 0), 1, generator=generator))
    move = list(moves[pick])
    return move[int(torch.multinomial(torch.softmax(logp[move] / temperature, 0), 1, generator=generator))]


class PointerLogitsProcessor:
    """A transformers ``LogitsProcessor`` that applies a pointer's constraint (``allowed`` is called
    for each step, so it follows the pointer as frames are committed)."""

    def __init__(self, allowed: Callable[[], Sequence[int]]) -> None:
        self.allowed = allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return mask_logits(scores, self.allowed())


# -- realignment -----------------------------------------------------------------------------------
class PhonemeProbe(Protocol):
    """A CTC phoneme recogniser over generated audio (the evaluation package trains one)."""

    def log_probs(self, audio_latents: torch.Tensor) -> torch.Tensor:
        """``[T_a, D_a]`` audio latents → ``[T_a, num_phonemes]`` log-probabilities; index 0 (silence)
        is the CTC blank."""
        ...


def ctc_align(log_probs: np.ndarray | torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Viterbi CTC alignment with blank 0: for each frame, the target index it emits (−1 = blank).

    ``log_probs`` ``[T, C]``; ``targets`` phoneme ids (no blanks; equal neighbours need a blank
    between them, as in CTC). Only prefixes are required: the path may end inside the targets, so
    the last frame's index says how far the audio got. Returns ``int64 [T]``.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    T = lp.shape[0]
    if T == 0:
        return np.zeros(0, np.int64)
    states = [0] + [s for t in targets for s in (t, 0)]  # blank, t0, blank, t1, blank, ...
    S = len(states)
    neg = -np.inf
    score = np.full((T, S), neg)
    back = np.zeros((T, S), np.int64)
    score[0, 0] = lp[0, 0]
    if S > 1:
        score[0, 1] = lp[0, states[1]]
    for t in range(1, T):
        for s in range(S):
            best, arg = score[t - 1, s], s
            if s >= 1 and score[t - 1, s - 1] > best:
                best, arg = score[t - 1, s - 1], s - 1
            if s >= 2 and states[s] != 0 and states[s] != states[s - 2] and score[t - 1, s - 2] > best:
                best, arg = score[t - 1, s - 2], s - 2
            score[t, s] = best + lp[t, states[s]]
            back[t, s] = arg
    s = int(np.argmax(score[T - 1]))
    path = np.zeros(T, np.int64)
    for t in range(T - 1, -1, -1):
        path[t] = (s - 1) // 2 if s % 2 == 1 else -1
        s = back[t, s]
    return path


def realigned_pointer(log_probs: np.ndarray | torch.Tensor, targets: Sequence[int]) -> int:
    """Positions the audio has started, by CTC alignment: 1 + the last target index the path emits."""
    path = ctc_align(log_probs, targets)
    emitted = path[path >= 0]
    return int(emitted.max()) + 1 if len(emitted) else 0
