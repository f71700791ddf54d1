"""Training data for the unit language model, from the corpus's exact phoneme timings.

:func:`build_turn_table` reads every speaking clip once (metadata and audio, no video) and writes
``turns.jsonl``: per clip, its turns with the frontend's words and phonemes and one frame unit per
audio-latent frame. The frontend's phonemes (what the orchestrator will see at inference) are
aligned to the corpus's phoneme events by edit distance; each frame takes the position whose event
covers its centre (silence outside events); a position shorter than a frame borrows one from a
longer neighbour, so every frame sequence obeys the pointer's rules. F0 buckets come from YIN on
the clip's audio, as in the latent cache.

:class:`UnitLMDataset` assembles sequences ``<bos> [voice prompt turn per speaker] [session turns]``,
each turn interleaved by :func:`~streamchar.orchestrator.pointer.interleave_turn`, the voice prompt
being a turn of the same character from another clip. Labels are the frame units and ``<end>``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from streamchar.data.phonemes import SILENCE_ID, F0Buckets, phoneme_id, voiced_mask
from streamchar.data.shards import Corpus, CorpusError
from streamchar.orchestrator.pointer import interleave_turn
from streamchar.orchestrator.text import Frontend, UnitVocabulary, Word
from streamchar.timeline import Timeline

logger = logging.getLogger(__name__)

TABLE = "turns.jsonl"
_VOICED_RMS = 0.01


def merge_positions(word_phonemes: list[tuple[int, ...]]) -> list[int]:
    """Transcript positions: the phonemes in order, equal neighbours merged (as the pointer does)."""
    positions: list[int] = []
    for phonemes in word_phonemes:
        for pid in phonemes:
            if not positions or positions[-1] != pid:
                positions.append(pid)
    return positions


def align_sequences(a: list[int], b: list[int]) -> list[tuple[int | None, int | None]]:
    """Edit-distance alignment of ``a`` and ``b``: pairs (i, j), None for a gap."""
    n, m = len(a), len(b)
    cost = np.zeros((n + 1, m + 1), np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(
                cost[i - 1, j] + 1, cost[i, j - 1] + 1, cost[i - 1, j - 1] + (a[i - 1] != b[j - 1])
            )
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]


def frame_positions(
    positions: list[int], events: list[tuple[int, float, float]], rate: float
) -> tuple[int, list[int]]:
    """Per-frame position index (−1 = silence) of a turn whose phoneme events are ``events``
    ``(phoneme id, start s, end s)``; returns (first frame, labels). Every position gets ≥ 1 frame."""
    pairs = align_sequences(positions, [e[0] for e in events])
    owner = np.full(len(events), -1)
    last = -1
    for i, j in pairs:
        if i is not None:
            last = i
        if j is not None:
            owner[j] = i if i is not None else max(last, 0)
    first = int(np.floor(events[0][1] * rate))
    end = int(np.ceil(events[-1][2] * rate))
    centres = (np.arange(first, end) + 0.5) / rate
    labels = np.full(len(centres), -1)
    for j, (_, start, stop) in enumerate(events):
        labels[(centres >= start) & (centres < stop)] = owner[j]
    out = [int(x) for x in labels]
    # every position needs a frame: borrow from a neighbour's run, else add a frame
    for pos in range(len(positions)):
        if pos in out:
            continue
        after = next((k for k, x in enumerate(out) if x > pos), len(out))
        before = after - 1
        while before >= 0 and out[before] < 0:
            before -= 1
        run_before = sum(1 for x in out if x == out[before]) if before >= 0 else 0
        run_after = sum(1 for x in out if after < len(out) and x == out[after]) if after < len(out) else 0
        if before >= 0 and run_before >= 2:
            out[before] = pos
        elif after < len(out) and run_after >= 2:
            out[after] = pos
        else:
            out.insert(after, pos)
    while out and out[0] < 0:
        out.pop(0)
        first += 1
    while out and out[-1] < 0:
        out.pop()
    return first, out


def turn_record(
    meta: dict,
    turn: dict,
    f0: np.ndarray,
    rms: np.ndarray,
    frontend: Frontend,
    buckets: F0Buckets,
    rate: float,
) -> dict | None:
    """One speaking turn of a clip: words, phonemes, frame units; None if it has no phonemes."""
    spoken = frontend.sentence(turn["text"])
    words = [w for w, _ in spoken]
    word_phonemes = [ph for _, ph in spoken]
    positions = merge_positions(word_phonemes)
    events = [
        (pid, float(s), float(e))
        for label, s, e in meta["phonemes"]
        if turn["start"] - 0.05 <= s < turn["end"] + 0.05 and (pid := phoneme_id(label)) != SILENCE_ID
    ]
    if not positions or not events:
        return None
    first, labels = frame_positions(positions, events, rate)
    units = []
    for k, pos in enumerate(labels):
        t = first + k
        if pos < 0:
            units.append(SILENCE_ID * buckets.size)
            continue
        pid = positions[pos]
        voiced = bool(voiced_mask(np.array([pid]))[0]) and t < len(f0) and f0[t] > 0 and rms[t] > _VOICED_RMS
        bucket = int(buckets.bucket(np.array([f0[t]]))[0]) if voiced else 0
        units.append(pid * buckets.size + bucket)
    speech = sum(1 for x in labels if x >= 0)
    return {
        "start_frame": first,
        "words": [[w.text, w.boundary] for w in words],
        "phonemes": [list(p) for p in word_phonemes],
        "units": units,
        "tempo": speech / len(positions),
    }


def build_turn_table(corpus_dir: str | Path, out: str | Path, language_override: str | None = None,
                     progress: bool = True) -> Path:  # fmt: skip
    """Write ``out/turns.jsonl`` (skipped if present and complete) and return its path."""
    from streamchar.data.latents import estimate_f0

    out = Path(out)
    path = out / TABLE
    if path.is_file():
        return path
    corpus = Corpus(corpus_dir)
    timeline = Timeline(**corpus.timeline)
    buckets = F0Buckets()
    frontends: dict[str, Frontend] = {}
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    kept = skipped = 0
    with tmp.open("w") as f:
        for entry in tqdm(corpus.entries(), desc="orchestrator turns", unit="clip", disable=not progress):
            if entry.get("kind") == "listening" or not entry.get("speaking_seconds", 1):
                continue
            reader = corpus.reader(entry["shard"])
            meta = reader.meta(entry["key"])
            if not meta.get("phonemes"):
                continue
            audio, _ = reader.audio(entry["key"])
            tokens = int(round(len(audio) / timeline.samples_per_audio_token))
            f0 = estimate_f0(audio, timeline, tokens)
            hop = timeline.samples_per_audio_token
            padded = np.zeros(tokens * hop, np.float32)
            padded[: min(len(audio), len(padded))] = audio[: len(padded)]
            rms = np.sqrt((padded.reshape(tokens, hop) ** 2).mean(axis=1))
            language = language_override or meta.get("voice", {}).get("language", "en-us")
            frontend = frontends.setdefault(language, Frontend(language))
            turns = []
            for turn in meta.get("turns", [{"speaker": "self", "start": 0, "end": meta["duration"],
                                             "text": meta["transcript"]}]):  # fmt: skip
                if turn["speaker"] != "self":
                    continue
                record = turn_record(meta, turn, f0, rms, frontend, buckets, timeline.audio_latent_rate)
                if record is None:
                    skipped += 1
                    continue
                turns.append(record)
            if not turns:
                continue
            kept += 1
            row = {
                "key": meta["key"], "split": meta.get("split", "train"), "kind": meta.get("kind", "monologue"),
                "char_id": meta.get("char_id", -1), "dialogue_id": meta.get("dialogue_id"),
                "language": language, "turns": turns,
            }  # fmt: skip
            f.write(json.dumps(row) + "\n")
    if not kept:
        tmp.unlink()
        raise CorpusError(f"{corpus_dir} has no clips with phoneme timings to train the orchestrator on.")
    tmp.replace(path)
    logger.info("orchestrator turns: %d clips (%d turns without phonemes skipped) -> %s", kept, skipped, path)
    return path


def read_turn_table(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def turn_words(turn: dict) -> list[Word]:
    return [Word(text, boundary) for text, boundary in turn["words"]]


def turn_tokens(vocab: UnitVocabulary, turn: dict, speaker: int, tempo: float) -> list[int]:
    return interleave_turn(
        vocab,
        turn_words(turn),
        [tuple(p) for p in turn["phonemes"]],
        turn["units"],
        speaker,
        vocab.tempo(tempo),
    )


def sessions_from_table(rows: list[dict]) -> list[dict]:
    """Conversations: a monologue clip is one session; the two views of a dialogue are merged into
    one session with speakers 0 and 1, turns in time order."""
    sessions: list[dict] = []
    dialogues: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("dialogue_id"):
            dialogues[row["dialogue_id"]].append(row)
        else:
            turns = [(0, t) for t in row["turns"]]
            sessions.append(
                {"split": row["split"], "chars": [row["char_id"]], "turns": turns, "key": row["key"]}
            )
    for dialogue_id, views in sorted(dialogues.items()):
        views.sort(key=lambda r: r["key"])
        turns = sorted(
            ((i, t) for i, v in enumerate(views) for t in v["turns"]), key=lambda x: x[1]["start_frame"]
        )
        sessions.append({"split": views[0]["split"], "chars": [v["char_id"] for v in views], "turns": turns,
                         "key": dialogue_id})  # fmt: skip
    return sessions


class UnitLMDataset(torch.utils.data.Dataset):
    """Token sequences for the unit LM; item ``i`` is deterministic given ``seed``."""

    def __init__(self, rows: list[dict], split: str, vocab: UnitVocabulary, max_tokens: int, seed: int = 0,
                 length: int | None = None) -> None:  # fmt: skip
        self.vocab = vocab
        self.max_tokens = max_tokens
        self.seed = seed
        all_sessions = sessions_from_table(rows)
        self.sessions = [s for s in all_sessions if s["split"] == split]
        if not self.sessions:
            raise CorpusError(f"The turn table has no '{split}' sessions; check the corpus splits.")
        # voice prompts: every turn of a character, from any session of the same split
        self.by_char: dict[int, list[tuple[str, dict]]] = defaultdict(list)
        for s in self.sessions:
            for speaker, turn in s["turns"]:
                self.by_char[s["chars"][speaker]].append((s["key"], turn))
        self.length = length or len(self.sessions)
        self.failures = 0

    def __len__(self) -> int:
        return self.length

    def prompt_for(self, char_id: int, exclude: str, rng: np.random.Generator) -> dict | None:
        options = [t for key, t in self.by_char.get(char_id, []) if key != exclude]
        return options[int(rng.integers(len(options)))] if options else None

    def sequence(self, session: dict, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        vocab = self.vocab
        prompts = [self.prompt_for(c, session["key"], rng) for c in session["chars"]]
        tempos = [p["tempo"] if p else DEFAULT_TEMPO for p in prompts]
        tokens, labels = [vocab.bos], [-100]

        def add(turn: dict, speaker: int) -> None:
            seq = turn_tokens(vocab, turn, speaker, tempos[speaker])
            tokens.extend(seq)
            labels.extend(t if (vocab.unit_of(t) is not None or t == vocab.end) else -100 for t in seq)

        for speaker, prompt in enumerate(prompts):
            if prompt is not None:
                add(prompt, speaker)
        for speaker, turn in session["turns"]:
            add(turn, speaker)
        return tokens[: self.max_tokens], labels[: self.max_tokens]

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        session = self.sessions[index % len(self.sessions)] if self.length == len(self.sessions) else \
            self.sessions[int(rng.integers(len(self.sessions)))]  # fmt: skip
        tokens, labels = self.sequence(session, rng)
        return {"input_ids": torch.tensor(tokens), "labels": torch.tensor(labels)}


DEFAULT_TEMPO = 2.0  # frames per position without a voice prompt (the tiny corpus's median: 2.02)


def collate_lm(items: list[dict], pad: int) -> dict:
    longest = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), longest), pad)
    labels = torch.full((len(items), longest), -100)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = x["input_ids"], x["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
