"""The progress-aware pointer and the streaming Orchestrator, driven by a fast deterministic stand-in
LM (its logits are a pure function of the context, as a real LM's are), plus CTC realignment."""

import hashlib
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamchar.orchestrator.dataset import frame_positions, merge_positions
from streamchar.orchestrator.pointer import (
    PointerLimits,
    TurnPointer,
    choose_move,
    ctc_align,
    interleave_turn,
    realigned_pointer,
)
from streamchar.orchestrator.session import Orchestrator
from streamchar.orchestrator.text import Frontend, TextError, UnitVocabulary, Word, WordStream

VOCAB = UnitVocabulary()


class HashLM:
    """Logits drawn from a hash of the whole context: deterministic given the tokens, like an LM.
    ``advance_bias`` favours the tokens that move the pointer on, so turns finish quickly."""

    def __init__(self, advance_bias: float = 2.0) -> None:
        self.tokens: list[int] = []
        self.advance_bias = advance_bias
        self.pointer: TurnPointer | None = None

    def reset(self, tokens):
        self.tokens = list(tokens)

    def append(self, tokens):
        self.tokens.extend(tokens)

    def __len__(self):
        return len(self.tokens)

    def next_token(self, moves):
        digest = hashlib.blake2b(np.asarray(self.tokens, np.int64).tobytes(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)
        logits = torch.randn(len(VOCAB), generator=gen)
        logits[VOCAB.end] += 3.0
        logits[VOCAB.unit_offset + 1 :] += self.advance_bias * torch.rand(1, generator=gen)
        return choose_move(logits, moves)


FRONTEND = Frontend()
WORDS = ["hello", "world,", "the", "apple", "is", "red.", "why?", "3", "cats!", "a", "pear", "top", "pot"]


def orchestrator(**kwargs) -> Orchestrator:
    return Orchestrator(HashLM(), VOCAB, chunk_frames=12, frontend=FRONTEND, **kwargs)


def transcript_positions(text: str) -> int:
    return len(merge_positions([ph for _, ph in FRONTEND.sentence(text)]))


def received_positions(text_so_far: str, final: bool) -> int:
    """Positions of the words whose phonemes the text received so far determines."""
    words = WordStream().push(text_so_far, final=final)
    determined = words if final else words[:-1]
    return len(
        merge_positions(
            [
                FRONTEND.phonemes(w, words[i + 1] if i + 1 < len(words) else None)
                for i, w in enumerate(determined)
            ]
        )
    )


def run_pushes(pushes: list[str], chunks_between: list[int], max_chunks: int = 400):
    orch = orchestrator()
    chunks, bounds, sent = [], [], ""
    for i, (piece, between) in enumerate(zip(pushes, chunks_between, strict=True)):
        final = i == len(pushes) - 1
        orch.push_text(piece, final=final)
        sent += piece
        for _ in range(between if not final else 0):
            chunks.append(orch.next_chunk())
            bounds.append(received_positions(sent, False))
    for _ in range(max_chunks):
        chunk = orch.next_chunk()
        chunks.append(chunk)
        bounds.append(received_positions(sent, True))
        if chunk.done:
            break
    return chunks, bounds


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=10), st.data())
def test_pointer_properties_over_random_pushes(words, data):
    text = " ".join(words)
    cuts = sorted(
        set(data.draw(st.lists(st.integers(1, len(text) - 1), max_size=5)) if len(text) > 1 else [])
    )
    pieces = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    between = data.draw(st.lists(st.integers(0, 2), min_size=len(pieces), max_size=len(pieces)))
    chunks, bounds = run_pushes(pieces, between)
    pointer = torch.cat([c.pointer for c in chunks])
    steps = torch.diff(pointer, prepend=torch.zeros(1, dtype=torch.long))
    assert (steps >= 0).all(), "the pointer moved backwards"
    assert (steps <= 1).all(), "the pointer skipped a phoneme"
    for chunk, bound in zip(chunks, bounds, strict=True):
        assert int(chunk.pointer.max()) <= bound, "the pointer passed text not yet received"
    assert chunks[-1].done
    assert sum(len(c.turn_ends) for c in chunks) == 1, "the turn must end exactly once"
    assert int(pointer[-1]) == transcript_positions(text)
    # once ended, the character listens
    units = torch.cat([c.units for c in chunks])
    speaking = torch.cat([c.speaking for c in chunks])
    assert not speaking[-1] and units[-1] == 0

    # pushing whole gives the same units; splitting only inserts held (silent) frames
    whole, _ = run_pushes([text], [0])
    whole_units = torch.cat([c.units[~c.held & (c.speaker >= 0)] for c in whole])
    split_units = torch.cat([c.units[~c.held & (c.speaker >= 0)] for c in chunks])
    assert torch.equal(whole_units, split_units)


def test_word_by_word_equals_whole_when_text_leads():
    text = "the apple is red. why? hello world, 3 cats!"
    whole, _ = run_pushes([text], [0])
    pieces = [w + " " for w in text.split()]
    split, _ = run_pushes(pieces, [0] * len(pieces))
    assert torch.equal(torch.cat([c.units for c in whole]), torch.cat([c.units for c in split]))
    assert not any(c.held.any() for c in whole)


def test_hold_waits_at_a_word_boundary_then_resumes():
    orch = orchestrator()
    orch.push_text("hello world the ")
    held = []
    for _ in range(8):
        chunk = orch.next_chunk()
        held += chunk.held.tolist()
        assert not chunk.done
    assert held[-1], "without more text the pointer must hold"
    assert orch.pointer <= received_positions("hello world the ", False)
    orch.push_text("apple is red.", final=True)
    for _ in range(100):
        if orch.next_chunk().done:
            break
    assert orch.pointer == transcript_positions("hello world the apple is red.")


def test_two_speakers_take_turns_and_history_is_bounded():
    orch = orchestrator(max_history_tokens=120)
    for turn in range(6):
        orch.push_text("hello world, the apple is red.", final=True, speaker=turn % 2)
    speakers = []
    for _ in range(400):
        chunk = orch.next_chunk()
        speakers += chunk.speaker.tolist()
        assert sum(len(h) for h in orch._history) <= 120 + 200  # a turn's worth over the bound at most
        if chunk.done:
            break
    order = [s for s, _ in itertools.groupby(x for x in speakers if x >= 0)]
    assert order == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="still open"):
        orch.push_text("one", speaker=0)
        orch.push_text("two", speaker=1)


def test_interrupt_returns_to_listening_within_a_chunk():
    orch = orchestrator()
    orch.push_text("hello world, the apple is red. why? " * 5, final=True)
    orch.next_chunk()
    orch.interrupt()
    chunk = orch.next_chunk()
    assert chunk.done and not chunk.speaking.any()


@pytest.mark.parametrize("text", ["...!?", "🙂🎉", "  , ; "])
def test_unspeakable_final_turn_raises_and_keeps_state(text):
    orch = orchestrator()
    orch.push_text("hello world", final=True)
    with pytest.raises(TextError, match="nothing speakable"):
        orch.push_text(text, final=True)
    for _ in range(50):
        if orch.next_chunk().done:
            break
    assert orch.pointer == transcript_positions("hello world")


def test_bad_pushes_are_rejected_without_losing_text():
    orch = orchestrator(max_push_chars=1000)
    orch.push_text("")  # nothing to do
    assert orch.next_chunk().done
    orch.push_text("hello ")
    with pytest.raises(TextError, match="Latin script"):
        orch.push_text("Привет ")
    with pytest.raises(TextError, match="max_push_chars"):
        orch.push_text("a " * 600)
    orch.push_text("world", final=True)
    for _ in range(50):
        if orch.next_chunk().done:
            break
    assert orch.pointer == transcript_positions("hello world")


def test_a_rejected_first_push_opens_no_turn():
    orch = orchestrator()
    with pytest.raises(TextError, match="Latin script"):
        orch.push_text("Привет мир")
    assert orch.idle and orch.next_chunk().done


def test_long_transcript_runs_in_bounded_memory():
    text = " ".join(WORDS[i % len(WORDS)] for i in range(11100))  # ~50,000 characters
    assert len(text) >= 50_000
    orch = orchestrator(max_context_tokens=512)
    orch.push_text(text, final=True)
    sizes = []
    for _ in range(300):
        orch.next_chunk()
        turn = orch._current
        sizes.append((len(orch.backend), len(turn.pointer._positions), len(turn.tokens)))
    assert max(s[0] for s in sizes) <= 512
    assert max(s[1] for s in sizes) <= 256 + 64
    assert orch.pointer > 500  # it made progress through the text


@pytest.mark.slow
def test_long_transcript_reaches_the_end_once():
    text = " ".join(WORDS[i % len(WORDS)] for i in range(11100))
    orch = orchestrator(max_context_tokens=512)
    orch.push_text(text, final=True)
    ends = 0
    while True:
        chunk = orch.next_chunk()
        ends += len(chunk.turn_ends)
        if chunk.done:
            break
    assert ends == 1 and orch.pointer == transcript_positions(text)


# -- the pointer on its own ------------------------------------------------------------------
def test_constraint_allows_only_current_next_or_silence():
    words = [Word("top"), Word("pot")]
    phonemes = {id(w): FRONTEND.phonemes(w, words[i + 1] if i + 1 < 2 else None) for i, w in enumerate(words)}
    ptr = TurnPointer(VOCAB, lambda w, n: phonemes[id(w)], VOCAB.speaker(0), VOCAB.tempo(2.0))
    ptr.add_words(words)
    ptr.finish()
    ptr.start_tokens()
    size = VOCAB.buckets.size
    allowed_phonemes = {
        VOCAB.unit_phoneme(VOCAB.unit_of(t)) for t in ptr.allowed() if VOCAB.unit_of(t) is not None
    }
    assert allowed_phonemes == {0, phonemes[id(words[0])][0]}
    ptr.commit(VOCAB.unit(phonemes[id(words[0])][0] * size + 3))
    allowed_phonemes = {
        VOCAB.unit_phoneme(VOCAB.unit_of(t)) for t in ptr.allowed() if VOCAB.unit_of(t) is not None
    }
    assert allowed_phonemes == {0, phonemes[id(words[0])][0], phonemes[id(words[0])][1]}
    assert VOCAB.end not in ptr.allowed()


def test_caps_force_progress():
    limits = PointerLimits(max_phoneme_frames=3, max_silence_frames=2)
    words = [Word("hello")]
    ptr = TurnPointer(VOCAB, lambda w, n: (20, 32), VOCAB.speaker(0), VOCAB.tempo(2.0), limits)
    ptr.add_words(words)
    ptr.finish()
    ptr.start_tokens()
    silence = VOCAB.unit(0)
    ptr.commit(silence)
    ptr.commit(silence)
    assert silence not in ptr.allowed()
    h = VOCAB.unit(20 * VOCAB.buckets.size)
    for _ in range(3):
        ptr.commit(h)
    assert h not in ptr.allowed()


def test_alternating_stay_and_silence_cannot_stall_forever():
    limits = PointerLimits(max_phoneme_frames=3, max_silence_frames=2)
    ptr = TurnPointer(VOCAB, lambda w, n: (20, 32), VOCAB.speaker(0), VOCAB.tempo(2.0), limits)
    ptr.add_words([Word("hello")])
    ptr.finish()
    ptr.start_tokens()
    h, silence = VOCAB.unit(20 * VOCAB.buckets.size), VOCAB.unit(0)
    ptr.commit(h)
    for _ in range(40):  # an LM that prefers anything but moving on
        options = ptr.allowed()
        token = h if h in options else silence if silence in options else options[0]
        ptr.commit(token)
        if ptr.p == 2:
            break
    assert ptr.p == 2 and ptr.frames <= limits.max_stall_frames + 2


def test_a_held_token_is_dropped_when_realignment_moves_the_pointer():
    orch = orchestrator()
    orch.push_text("hello world the ")
    for _ in range(4):
        orch.next_chunk()
    orch.push_text("apple is red.", final=True)
    ptr = orch._current.pointer
    assert ptr.p == 0 and ptr.num_positions >= 2  # held before the first phoneme
    # a unit held for position 0, which realignment below moves past
    orch._pending_token = VOCAB.unit(ptr._position(0) * VOCAB.buckets.size)
    ahead = [ptr._position(i) for i in range(ptr._pos_base, ptr.p + 2)]
    probe = np.full((len(ahead), 70), np.log(0.01 / 69))
    probe[np.arange(len(ahead)), ahead] = np.log(0.99)
    orch._current.frame_p.extend([1] * len(ahead))
    orch.realign(torch.from_numpy(probe))
    for _ in range(100):
        if orch.next_chunk().done:
            break
    assert orch.pointer == transcript_positions("hello world the apple is red.")


def test_frame_targets_obey_the_pointer():
    # corpus-like events: a phoneme shorter than a frame, an extra event, a merged repeat across a pause
    positions = merge_positions([(20, 32, 5), (5, 1)])  # h @ l | l p  -> h @ l p
    events = [
        (20, 0.00, 0.10),
        (32, 0.10, 0.12),
        (5, 0.12, 0.25),
        (9, 0.25, 0.27),
        (5, 0.50, 0.60),
        (1, 0.6, 0.7),
    ]
    first, labels = frame_positions(positions, events, 25.0)
    spoken = [x for x in labels if x >= 0]
    assert spoken == sorted(spoken) and set(spoken) == set(range(len(positions)))
    units = [0 if x < 0 else positions[x] * VOCAB.buckets.size for x in labels]
    words = [Word("hel"), Word("lp")]
    interleave_turn(VOCAB, words, [(20, 32, 5), (5, 1)], units, 0, VOCAB.tempo(2.0))  # raises if not


# -- CTC realignment -------------------------------------------------------------------------
def _naive_ctc_best(log_probs: np.ndarray, targets: list[int]) -> float:
    """Best prefix-path score by enumerating every frame labelling (tiny sizes only)."""
    T, C = log_probs.shape
    best = -np.inf
    for labels in itertools.product(range(C), repeat=T):
        collapsed = [k for k, _ in itertools.groupby(labels)]
        emitted = [k for k in collapsed if k != 0]
        if emitted == targets[: len(emitted)] and len(emitted) >= 1:
            best = max(best, sum(log_probs[t, labels[t]] for t in range(T)))
    return best


def test_ctc_align_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        log_probs = np.log(rng.dirichlet(np.ones(4), size=5))
        targets = [1, 2, 3]
        path = ctc_align(log_probs, targets)
        states = [0] + [s for t in targets for s in (t, 0)]
        labels = [targets[i] if i >= 0 else 0 for i in path]
        score = sum(log_probs[t, labels[t]] for t in range(len(labels)))
        best = max(_naive_ctc_best(log_probs, targets), sum(log_probs[:, 0]))
        assert score == pytest.approx(best)
        assert len(states) == 7


def test_realignment_from_ground_truth_alignment():
    # one-hot-ish probe output from a ground-truth frame sequence: the pointer it gives is the truth
    targets = [20, 32, 5, 45, 7]
    frames = [0, 20, 20, 32, 5, 5, 0, 45]
    log_probs = np.full((len(frames), 70), np.log(0.01 / 69))
    log_probs[np.arange(len(frames)), frames] = np.log(0.99)
    assert realigned_pointer(log_probs, targets) == 4

    orch = orchestrator()
    orch.push_text("hello world, the apple is red.", final=True)
    orch.next_chunk()
    turn = orch._current
    ptr = turn.pointer
    before = ptr.p
    ahead = [ptr._position(i) for i in range(ptr._pos_base, min(before + 2, ptr.num_positions))]
    probe = np.full((len(ahead), 70), np.log(0.01 / 69))
    probe[np.arange(len(ahead)), ahead] = np.log(0.99)
    turn.frame_p.clear()
    turn.frame_p.extend([1] * len(ahead))
    assert orch.realign(torch.from_numpy(probe)) == 0
    assert ptr.p == min(before + 2, ptr.num_positions) and orch.pointer >= before


def test_realignment_behind_later_planned_frames_moves_the_pointer_as_without_them():
    """Audio read while later frames were already planned (decode overlap) realigns the pointer by the same
    amount as when it is read at once; frames further back than the turn are ignored."""
    pointers = []
    for behind in (0, 3, 1000):
        orch = orchestrator()
        orch.push_text("hello world the apple is red.", final=True)
        orch.next_chunk()
        ptr = orch._current.pointer
        ahead = [ptr._position(i) for i in range(max(ptr.p - 1, 0), ptr.p + 3)]
        probe = np.full((len(ahead), 70), np.log(0.01 / 69))
        probe[np.arange(len(ahead)), ahead] = np.log(0.99)
        orch._current.frame_p.extend([ptr.p] * (len(ahead) + min(behind, 3)))
        start = ptr.p
        orch.realign(torch.from_numpy(probe), behind=behind)
        pointers.append(orch._current.pointer.p - start)
    assert pointers[0] == pointers[1] > 0 and pointers[2] == 0
