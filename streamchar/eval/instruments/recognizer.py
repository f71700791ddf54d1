"""Transcript fidelity: the CTC phoneme recognizer (:mod:`streamchar.orchestrator.reader`, which realigns the
pointer at run time) trained only on the corpus's ground-truth speech, and the word decoding built on it.

Words come from the phoneme hypothesis by lexicon decoding: a dynamic programme splits the greedy
CTC phoneme string into the sequence of lexicon words whose espeak pronunciations are closest in edit
distance, plus a per-word penalty. The lexicon is the sentence generator's closed word classes plus every
word of the training transcripts (:func:`recognizer_vocabulary`), pronounced by espeak-ng and stored beside
the weights, so decoding needs no espeak at run time. Homophones cannot be told apart by sound; the
decoder then takes the word listed first (the generator's closed word classes come first).

The text normalisation and error rates (PER, WER) live in :mod:`streamchar.eval.metrics.error_rates`.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamchar.data.phonemes import PHONEMES, SILENCE_ID, phoneme_id
from streamchar.eval.instruments.base import fit, save_instrument
from streamchar.eval.metrics.error_rates import error_rate, normalise_words
from streamchar.eval.metrics.features import EvalSplit
from streamchar.loaders import InstrumentError, load_phoneme_recognizer
from streamchar.orchestrator.reader import CTCRecognizer, Recognizer, greedy_phonemes

logger = logging.getLogger(__name__)

LEXICON_FILE = "lexicon.tsv.gz"


# -- the lexicon and word decoding -----------------------------------------------------------------
@dataclass
class Lexicon:
    words: list[str]
    pronunciations: list[list[int]]  # phoneme ids (no silence), one list per word

    def __post_init__(self) -> None:
        longest = max(len(p) for p in self.pronunciations)
        self._table = np.full((len(self.words), longest), -1, dtype=np.int16)  # [V, L]
        for i, p in enumerate(self.pronunciations):
            self._table[i, : len(p)] = p
        self._lengths = np.array([len(p) for p in self.pronunciations])
        self._mismatches: dict[int, np.ndarray] = {}

    def _mismatch(self, symbol: int) -> np.ndarray:
        """``int32 [V, L]``: 1 where a pronunciation's phoneme differs from ``symbol``."""
        if symbol not in self._mismatches:
            self._mismatches[symbol] = (self._table != symbol).astype(np.int32)
        return self._mismatches[symbol]

    @classmethod
    def build(cls, words: list[str]) -> Lexicon:
        """Pronounce ``words`` with espeak-ng (each alone); words it cannot say are left out."""
        from tqdm import tqdm

        from streamchar.data.phonemizer import get_phonemizer

        phonemizer = get_phonemizer()
        kept, prons = [], []
        for word in tqdm(words, desc="lexicon", unit="word"):
            ids = [phoneme_id(p) for group in phonemizer.words(word) for p in group]
            ids = [i for i in ids if i != SILENCE_ID]
            if ids:
                kept.append(word)
                prons.append(ids)
        return cls(kept, prons)

    def save(self, path: str | Path) -> None:
        lines = [
            f"{w}\t{' '.join(PHONEMES[i] for i in p)}"
            for w, p in zip(self.words, self.pronunciations, strict=True)
        ]
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        words, prons = [], []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                word, _, phones = line.rstrip("\n").partition("\t")
                words.append(word)
                prons.append([phoneme_id(p) for p in phones.split()])
        return cls(words, prons)

    def decode(self, phonemes: list[int], word_penalty: float = 1.0, skip_cost: float = 1.0) -> list[str]:
        """The word sequence whose pronunciations best explain ``phonemes``.

        Minimises the sum over words of (edit distance between the word's pronunciation and its span of
        the hypothesis + ``word_penalty``), where a hypothesis phoneme may also be skipped at
        ``skip_cost``. Vectorised over the lexicon: for every start, one edit-distance table per word
        grows a phoneme at a time.
        """
        n = len(phonemes)
        if n == 0:
            return []
        table, lengths = self._table, self._lengths
        longest = table.shape[1]
        rows = np.arange(len(self.words))
        best = np.full(n + 1, np.inf)
        best[0] = 0.0
        back: list[tuple[int, int]] = [(-1, -1)] * (n + 1)  # (start, word index or -1 for a skip)
        columns = np.arange(longest + 1, dtype=np.int32)
        for start in range(n):
            if best[start] + skip_cost < best[start + 1]:
                best[start + 1], back[start + 1] = best[start] + skip_cost, (start, -1)
            # dist[:, l] = edit distance between hypothesis[start:start + k] and pronunciation[:l]
            dist = np.tile(columns, (len(rows), 1))
            for k in range(1, min(n - start, longest + 2) + 1):
                # substitution or match from dist[:, l - 1], deletion from dist[:, l]; then insertions
                # along the row in closed form: new[l] = l + min over l' <= l of (step[l'] - l')
                step = np.empty_like(dist)
                step[:, 0] = k
                np.minimum(
                    dist[:, :-1] + self._mismatch(phonemes[start + k - 1]), dist[:, 1:] + 1, out=step[:, 1:]
                )
                dist = np.minimum.accumulate(step - columns, axis=1) + columns
                cost = dist[rows, lengths] + word_penalty
                word = int(np.argmin(cost))
                total = best[start] + cost[word]
                if total < best[start + k]:
                    best[start + k], back[start + k] = total, (start, word)
        words, position = [], n
        while position > 0:
            start, word = back[position]
            if word >= 0:
                words.append(self.words[word])
            position = start
        return words[::-1]


def closed_vocabulary() -> list[str]:
    """The sentence generator's closed word classes (nouns, verbs, adjectives, names, ...)."""
    from streamchar.data import sentences as s

    words: list[str] = []
    for group in (s.NOUNS, s.ADJECTIVES, s.ADVERBS, s.PLACES, s.NAMES):
        words.extend(group)
    for forms in s._transitive_verbs():
        words.extend(forms)
    for forms in s.INTRANSITIVE:
        words.extend(forms)
    return list(dict.fromkeys(w for phrase in words for w in normalise_words(phrase)))


def recognizer_vocabulary(transcripts: list[str]) -> list[str]:
    """The decoding vocabulary: the generator's closed word classes, then every word of the training
    transcripts (the usual ASR practice of a vocabulary taken from training text; held-out words
    outside it are out-of-vocabulary errors, and their rate is reported)."""
    words = closed_vocabulary()
    for text in transcripts:
        words.extend(normalise_words(text))
    return list(dict.fromkeys(words))


# -- the instrument ----------------------------------------------------------------------------------
def load_recognizer(folder: str | Path, words: bool = False) -> Recognizer:
    """The recognizer in ``folder`` with its lexicon; with ``words``, the lexicon is required."""
    recognizer = load_phoneme_recognizer(folder)
    lexicon_path = Path(folder) / LEXICON_FILE
    if words and not lexicon_path.is_file():
        raise InstrumentError(
            f"{lexicon_path} not found, so this recognizer reads phonemes but not words; retrain it with "
            "`streamchar eval train recognizer`."
        )
    recognizer.lexicon = Lexicon.load(lexicon_path) if lexicon_path.is_file() else None
    return recognizer


# -- training and proof ----------------------------------------------------------------------------------
def _spec_augment(mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Two band masks (up to 10 bands), two time masks (up to 20 frames) and a random spectral tilt."""
    b, m, f = mel.shape
    mel = mel.clone()
    for i in range(b):
        for _ in range(2):
            width = int(torch.randint(0, 11, (1,), generator=generator))
            lo = int(torch.randint(0, f - width + 1, (1,), generator=generator))
            mel[i, :, lo : lo + width] = 0
            width = int(torch.randint(0, 21, (1,), generator=generator))
            lo = int(torch.randint(0, max(1, m - width), (1,), generator=generator))
            mel[i, lo : lo + width] = 0
    tilt = (torch.rand(b, 1, 1, generator=generator) - 0.5) * 2.0
    return mel + tilt * torch.linspace(-1, 1, f)


def train_recognizer(split: EvalSplit, steps: int = 1500, batch: int = 16, run_dir: str | Path | None = None,
                     seed: int = 0) -> CTCRecognizer:  # fmt: skip
    clips = split.monologues()
    if not clips:
        raise ValueError(
            "The evaluation cache has no monologue clips with phonemes to train the recognizer on."
        )
    torch.manual_seed(seed)
    model = CTCRecognizer()
    ctc = nn.CTCLoss(blank=SILENCE_ID, zero_infinity=True)

    def loss_fn(generator: torch.Generator):
        picks = [clips[int(i)] for i in torch.randint(0, len(clips), (batch,), generator=generator)]
        mels = [split.clip_mel(i) for i in picks]
        lengths = torch.tensor([len(m) for m in mels])
        mel = nn.utils.rnn.pad_sequence(mels, batch_first=True)
        mel = _spec_augment(mel, generator)
        targets = [torch.tensor(split.clips[i]["phoneme_ids"]) for i in picks]
        log_probs = torch.log_softmax(model(mel), -1).transpose(0, 1)  # [T, B, C]
        loss = ctc(log_probs, torch.cat(targets), CTCRecognizer.output_lengths(lengths),
                   torch.tensor([len(t) for t in targets]))  # fmt: skip
        return loss, {}

    return fit(model, loss_fn, steps, run_dir, lr=3e-3, desc="recognizer", seed=seed)


def evaluate_recognizer(recognizer: Recognizer, split: EvalSplit, max_clips: int = 0,
                        with_words: bool = True) -> dict:  # fmt: skip
    """Phoneme and word error rates on a split's ground-truth monologues."""
    clips = split.monologues()[: max_clips or None]
    phone_pairs, word_pairs = [], []
    for i in clips:
        hypothesis = greedy_phonemes(recognizer.mel_log_probs(split.clip_mel(i)))
        phone_pairs.append((split.clips[i]["phoneme_ids"], hypothesis))
        if with_words and recognizer.lexicon is not None:
            words = recognizer.lexicon.decode(hypothesis, recognizer.word_penalty)
            word_pairs.append((normalise_words(split.clips[i]["transcript"]), words))
    result = {"clips": len(clips), "per": round(error_rate(phone_pairs), 4)}
    if word_pairs:
        result["wer"] = round(error_rate(word_pairs), 4)
    return result


def save_recognizer(recognizer: Recognizer, folder: str | Path, scores: dict, card: str) -> Path:
    folder = Path(folder)
    save_instrument(
        recognizer.model, folder, {"model": {}, "word_penalty": recognizer.word_penalty}, scores, card
    )
    if recognizer.lexicon is not None:
        recognizer.lexicon.save(folder / LEXICON_FILE)
    return folder
