"""The streaming orchestrator: text in, one chunk of frame-aligned audio conditions out.

    orch = load_orchestrator(cfg)                 # streamchar.loaders: the LM of orchestrator.path
    orch.push_text("Hello the", final=False)      # text as a chat model streams it
    orch.push_text("re, how are you?", final=True)
    while True:
        chunk = orch.next_chunk()                 # timeline.chunk_audio_tokens frames
        ...                                       # chunk.units -> the denoiser's conditions
        if chunk.done:                            # the turn ended in this chunk (or nothing is queued)
            break

Turns: text pushed after a final push opens the next turn (``speaker`` 0 or 1 says whose voice);
turns play in order, and between them (or while waiting for text) the character listens. The LM's
context holds ``<bos>``, one voice-prompt turn per speaker (pinned), earlier turns (at most
``max_history_tokens``, oldest dropped first) and the current turn; a turn longer than the window
keeps its most recent tokens, so memory stays bounded however long the session or the text.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import torch

from streamchar.data.phonemes import SILENCE_ID
from streamchar.orchestrator.backends import LLMBackend, make_backend
from streamchar.orchestrator.dataset import DEFAULT_TEMPO, turn_tokens
from streamchar.orchestrator.pointer import PointerLimits, TurnPointer, realigned_pointer
from streamchar.orchestrator.text import Frontend, TextError, UnitVocabulary, WordStream

logger = logging.getLogger(__name__)


def hf_backend_options(cfg, model) -> dict:
    """The in-process backend's settings for ``model``: ``orchestrator.kv_cache``, ``orchestrator.static_cache``
    (auto: on CUDA), its decode step compiled when ``engine.compile`` is on (auto: on CUDA), and
    ``orchestrator.lean_decode`` (auto: where the cache is not static and the model is one the lean step
    covers)."""
    from streamchar.config import resolve_switch
    from streamchar.orchestrator.lean import lean_supported

    ocfg = cfg.orchestrator
    cuda = next(model.parameters()).device.type == "cuda"
    static = resolve_switch(ocfg.static_cache, "orchestrator.static_cache", cuda)
    lean = resolve_switch(ocfg.lean_decode, "orchestrator.lean_decode", not static and lean_supported(model))
    return {"kv_cache": ocfg.kv_cache, "static": static, "max_tokens": ocfg.max_positions, "lean": lean,
            "compile": static and resolve_switch(cfg.engine.compile, "engine.compile", cuda)}  # fmt: skip


@dataclass(frozen=True)
class AudioConditions:
    """One chunk's frame-aligned audio conditions (``T_a`` = the timeline's audio tokens per chunk).

    Attributes:
        units: ``[T_a]`` long, unit id per audio-latent frame (phoneme id x F0 buckets + bucket; 0 =
            silence), the denoiser's ``Conditions.units``.
        pointer: ``[T_a]`` long, transcript positions (phonemes, equal neighbours merged) started in
            the session so far, after each frame; never decreases.
        speaking: ``[T_a]`` bool, True while a turn is under way (its first phoneme has started).
        speaker: ``[T_a]`` long, whose turn (0 or 1) each frame belongs to; -1 while listening.
        held: ``[T_a]`` bool, frames where speech waits for text that has not arrived yet.
        turn_ends: frame indices after which a turn ended (the character returns to listening); -1 when
            it ended before this chunk's first frame.
        done: True when every pushed turn is final and has been spoken.
        word: ``[T_a]`` long, session-wide index of the word being spoken (counting every word pushed, see
            :attr:`Orchestrator.words_pushed`); -1 before a turn's first phoneme.
    """

    units: torch.Tensor
    pointer: torch.Tensor
    speaking: torch.Tensor
    speaker: torch.Tensor
    held: torch.Tensor
    turn_ends: tuple[int, ...]
    done: bool
    word: torch.Tensor | None = None


@dataclass
class VoicePrompt:
    """Speech of the voice to imitate: one or more turns (words, phonemes, frame units, tempo) as in
    ``turns.jsonl``. More speech gives the LM a steadier idea of the voice's tempo and pitch."""

    turn: dict | list[dict]

    @property
    def turns(self) -> list[dict]:
        return list(self.turn) if isinstance(self.turn, list) else [self.turn]

    @property
    def tempo(self) -> float:
        """Frames per transcript position over all prompt turns."""
        frames = sum(t["tempo"] * _positions(t) for t in self.turns)
        return float(frames / max(sum(_positions(t) for t in self.turns), 1))


def _positions(turn: dict) -> int:
    from streamchar.orchestrator.dataset import merge_positions

    return len(merge_positions([tuple(p) for p in turn["phonemes"]]))


class _Turn:
    def __init__(self, speaker: int, pointer: TurnPointer) -> None:
        self.speaker = speaker
        self.words = WordStream()
        self.pointer = pointer
        self.tokens: list[int] = []  # this turn's tokens in the LM context
        self.frame_p: deque[int] = deque(maxlen=1024)  # pointer after each of the recent frames


class Orchestrator:
    """Transcript (streamed) → per-chunk :class:`AudioConditions`, through the unit LM and the pointer."""

    def __init__(
        self,
        backend: LLMBackend,
        vocab: UnitVocabulary,
        chunk_frames: int,
        frontend: Frontend | None = None,
        voice_prompts: dict[int, VoicePrompt] | None = None,
        max_context_tokens: int = 2048,
        max_history_tokens: int = 768,
        limits: PointerLimits | None = None,
        max_push_chars: int = 100_000,
    ) -> None:
        if chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames}.")
        self.backend = backend
        self.vocab = vocab
        self.chunk_frames = chunk_frames
        self.frontend = frontend or Frontend()
        self.limits = limits or PointerLimits()
        self.max_context_tokens = max_context_tokens
        self.max_history_tokens = max_history_tokens
        self.max_push_chars = max_push_chars
        self.voice_prompts = dict(voice_prompts or {})
        self._prompt_tokens = self._build_prompt_tokens()
        if len(self._prompt_tokens) > max_context_tokens // 2:
            raise ValueError(
                f"The voice prompts take {len(self._prompt_tokens)} tokens, over half of max_context_tokens "
                f"({max_context_tokens}); use shorter prompt turns or raise orchestrator.max_context_tokens."
            )
        self.reset()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, cfg, loaded: tuple, voice_prompts: dict[int, VoicePrompt] | None = None
    ) -> Orchestrator:
        """The orchestrator of ``cfg.orchestrator`` over a unit LM already in memory: ``loaded`` is ``(model,
        vocab)`` (:func:`streamchar.loaders.load_orchestrator` loads one from a folder; the engine loads the LM
        once and gives every session its own backend and KV cache over it)."""
        ocfg = cfg.orchestrator
        model, vocab = loaded
        backend = make_backend("hf", model=model, temperature=ocfg.temperature, seed=ocfg.seed,
                               **hf_backend_options(cfg, model))  # fmt: skip
        return cls.over_backend(cfg, backend, vocab, voice_prompts)

    @classmethod
    def over_backend(
        cls, cfg, backend, vocab, voice_prompts: dict[int, VoicePrompt] | None = None
    ) -> Orchestrator:
        """The orchestrator of ``cfg.orchestrator`` planning through ``backend`` (in process, or vLLM)."""
        ocfg = cfg.orchestrator
        limits = PointerLimits(ocfg.max_phoneme_frames, ocfg.max_silence_frames)
        return cls(backend, vocab, cfg.timeline.chunk_audio_tokens, Frontend(ocfg.language), voice_prompts,
                   ocfg.max_context_tokens, ocfg.max_history_tokens, limits, ocfg.max_push_chars)  # fmt: skip

    def _build_prompt_tokens(self) -> list[int]:
        tokens = [self.vocab.bos]
        for speaker in sorted(self.voice_prompts):
            prompt = self.voice_prompts[speaker]
            for turn in prompt.turns:
                tokens += turn_tokens(self.vocab, turn, speaker, prompt.tempo)
        return tokens

    def tempo(self, speaker: int) -> float:
        prompt = self.voice_prompts.get(speaker)
        return prompt.tempo if prompt is not None else DEFAULT_TEMPO

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation (voice prompts stay)."""
        self._turns: deque[_Turn] = deque()  # queued and current, in order
        self._current: _Turn | None = None
        self._history: deque[list[int]] = deque()
        self._pending_token: int | None = None
        self._positions_done = 0  # positions of finished turns
        self._words_done = 0  # words pushed to finished turns (spoken or cut off by an interrupt)
        self.backend.reset(self._prompt_tokens)

    @property
    def pointer(self) -> int:
        """Transcript positions started in the session so far."""
        return self._positions_done + (self._current.pointer.p if self._current else 0)

    @property
    def words_pushed(self) -> int:
        """Words pushed in the session so far, counting words begun but not yet released (the next
        push's first new word has this index in :attr:`AudioConditions.word`)."""
        return self._words_done + sum(t.pointer.received + t.words.pending_words for t in self._turns)

    @property
    def idle(self) -> bool:
        """Nothing queued or under way: the character listens."""
        return self._current is None and not self._turns

    def _new_turn(self, speaker: int) -> _Turn:
        pointer = TurnPointer(self.vocab, self.frontend.phonemes, self.vocab.speaker(speaker),
                              self.vocab.tempo(self.tempo(speaker)), self.limits)  # fmt: skip
        return _Turn(speaker, pointer)

    # -- text in ----------------------------------------------------------------------------------
    def push_text(self, text: str, final: bool = False, speaker: int = 0) -> None:
        """Add transcript text for ``speaker``'s turn; ``final`` closes the turn.

        Text after a final push opens a new turn. Empty text is allowed: it closes the open turn when
        ``final``, and does nothing otherwise. Raises :class:`TextError` for text the frontend cannot
        speak (nothing from this call is kept then) and when a turn is closed without a single speakable
        word (the turn is dropped).
        """
        if not isinstance(text, str):
            raise TypeError(f"push_text takes a str, got {type(text).__name__}.")
        if len(text) > self.max_push_chars:
            raise TextError(
                f"push_text got {len(text):,} characters, over orchestrator.max_push_chars "
                f"({self.max_push_chars:,}); push long text in pieces."
            )
        if speaker not in (0, 1):
            raise ValueError(f"speaker must be 0 or 1, got {speaker}.")
        last = self._turns[-1] if self._turns else None
        if last is None or last.pointer.final:
            if not text.strip():
                return  # nothing to say and no open turn to close
            opened = self._new_turn(speaker)
            words = opened.words.push(text, final)  # may raise: then no turn is opened
            last = opened
            self._turns.append(last)
        elif last.speaker != speaker:
            raise ValueError(
                f"Speaker {last.speaker}'s turn is still open; close it with push_text(..., final=True) before "
                f"speaker {speaker} speaks."
            )
        else:
            probe = last.words.copy()  # validate first, so a bad push leaves the turn untouched
            words = probe.push(text, final)
            last.words = probe
        last.pointer.add_words(words)
        if final:
            last.pointer.finish()
            if last.pointer.received == 0:
                self._turns.remove(last)
                raise TextError(
                    f"The turn has nothing speakable ({text[:40]!r}...); send at least one word in Latin script."
                )

    def interrupt(self) -> None:
        """Stop speaking: the current turn ends at the next frame and queued turns are dropped."""
        if self._current is not None and self._current.pointer.started:
            self._current.pointer.ended = True
            self._finish_turn(self._current, interrupted=True)
        self._turns.clear()
        self._pending_token = None

    # -- frames out ------------------------------------------------------------------------------
    def _start_turn(self) -> _Turn | None:
        if self._current is not None:
            return self._current
        if not self._turns or not self._turns[0].pointer.ready():
            return None
        turn = self._turns[0]
        start = turn.pointer.start_tokens()
        history_len = sum(len(h) for h in self._history)
        trimmed = False
        while self._history and history_len > self.max_history_tokens:
            history_len -= len(self._history.popleft())
            trimmed = True
        if trimmed:
            self.backend.reset(self._prompt_tokens + [t for h in self._history for t in h])
        self._append(turn, start)
        self._current = turn
        return turn

    def _append(self, turn: _Turn, tokens: list[int]) -> None:
        turn.tokens += tokens
        self.backend.append(tokens)
        if len(self.backend) > self.max_context_tokens:
            # keep the prompts and the newest half of the window of this turn
            keep = max(self.max_context_tokens // 2 - len(self._prompt_tokens), 16)
            turn.tokens = turn.tokens[-keep:]
            self._history.clear()
            self.backend.reset(self._prompt_tokens + turn.tokens)

    def _finish_turn(self, turn: _Turn, interrupted: bool = False) -> None:
        self._append(turn, [self.vocab.end])
        self._history.append(turn.tokens)
        self._positions_done += turn.pointer.p
        self._words_done += turn.pointer.received + turn.words.pending_words
        self._current = None
        if self._turns and self._turns[0] is turn:
            self._turns.popleft()
        if interrupted:
            logger.info("turn interrupted at position %d", turn.pointer.p)

    @torch.inference_mode()
    def next_chunk(self, frames: int | None = None) -> AudioConditions:
        """Plan the next chunk: ``chunk_frames`` (or ``frames``) units with pointer, speaking mask and speaker."""
        units, pointer, speaking, speaker, held, turn_ends, word = [], [], [], [], [], [], []
        silence = SILENCE_ID * self.vocab.buckets.size
        frames = self.chunk_frames if frames is None else frames
        while len(units) < frames:
            turn = self._start_turn()
            if turn is None:
                waiting = bool(self._turns)
                units.append(silence)
                speaking.append(False)
                speaker.append(self._turns[0].speaker if waiting else -1)
                held.append(waiting)
                pointer.append(self.pointer)
                word.append(-1)
                continue
            ptr = turn.pointer
            token = self._pending_token
            if token is not None and token not in ptr.allowed():  # the pointer moved (realign)
                token = None
            if token is None:
                token = self.backend.next_token(ptr.moves())
            if token == self.vocab.end:
                self._pending_token = None
                ptr.commit(token)
                self._finish_turn(turn)
                turn_ends.append(len(units) - 1)
                continue
            if not ptr.can_commit(token):  # the text for this frame has not arrived: hold
                self._pending_token = token
                units.append(silence)
                speaking.append(ptr.p > 0)
                speaker.append(turn.speaker)
                held.append(True)
                pointer.append(self.pointer)
                word.append(self._word_index(turn))
                continue
            self._pending_token = None
            inserted = ptr.commit(token)
            self._append(turn, [token, *inserted])
            turn.frame_p.append(ptr.p)
            units.append(self.vocab.unit_of(token))
            speaking.append(ptr.p > 0)
            speaker.append(turn.speaker)
            held.append(False)
            pointer.append(self.pointer)
            word.append(self._word_index(turn))
        return AudioConditions(
            units=torch.tensor(units, dtype=torch.long),
            pointer=torch.tensor(pointer, dtype=torch.long),
            speaking=torch.tensor(speaking, dtype=torch.bool),
            speaker=torch.tensor(speaker, dtype=torch.long),
            held=torch.tensor(held, dtype=torch.bool),
            turn_ends=tuple(turn_ends),
            done=self.idle,
            word=torch.tensor(word, dtype=torch.long),
        )

    def _word_index(self, turn: _Turn) -> int:
        current = turn.pointer.current_word()
        return self._words_done + current if current >= 0 else -1

    # -- realignment ------------------------------------------------------------------------------
    def realign(self, log_probs: torch.Tensor, lookahead: int = 4, behind: int = 0) -> int:
        """Move the pointer forward to where the generated audio is, from a CTC phoneme probe's
        ``log_probs`` ``[F, num_phonemes]`` over the current turn's last ``F`` spoken frames (or the ``F``
        before the last ``behind``, when frames were planned after the audio that was read).

        The pointer never moves back: if the audio lags, the lag is returned (positive) and the pointer
        stays; if the audio is ahead, the pointer jumps (within the text already in the LM's context) and
        0 is returned.
        """
        turn = self._current
        if turn is None or not turn.frame_p or len(log_probs) == 0:
            return 0
        ptr = turn.pointer
        planned = len(turn.frame_p) - behind
        frames = min(len(log_probs), planned)
        if frames <= 0:
            return 0
        window = list(turn.frame_p)[planned - frames : planned]
        while window and window[0] - 1 < ptr._pos_base and ptr._pos_base > 0:
            window.pop(0)  # frames of positions already forgotten
        if not window:
            return 0
        frames = len(window)
        start = max(window[0] - 1, 0)
        # where the plan was at the last frame read: the pointer itself, or (``behind``) its value then
        planned_at = ptr.p if not behind else window[-1]
        end = min(planned_at + lookahead, ptr.num_positions)
        targets = [ptr._position(i) for i in range(start, end)]
        reached = start + realigned_pointer(torch.as_tensor(log_probs[-frames:]).cpu().numpy(), targets)
        if reached <= planned_at:
            return planned_at - reached
        inserted = ptr.jump(min(ptr.p + reached - planned_at, ptr.num_positions))
        if inserted is not None:
            self._pending_token = None
            self._append(turn, inserted)
        return 0
