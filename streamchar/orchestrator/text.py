"""The text frontend: normalisation, words as they complete, phonemes, and the LM's vocabulary.

Text arrives in pieces (a chat model streams a few characters at a time). :class:`WordStream`
turns those pieces into :class:`Word` s, each released only once the text after it shows where it
ends and what punctuation closes it; :func:`normalize_token` spells out numbers, dates, times,
currency, percentages, abbreviations and symbols one whitespace-separated token at a time, so the
words never depend on how the text was split into pushes. :class:`Frontend` gives each word its
phonemes from espeak-ng, phonemising the word together with the word after it (espeak reduces
function words by what follows: "the apple" vs "the pear"), which measured 0.5 % phoneme error
against the corpus's own phoneme events, against 2.7 % for words phonemised alone (`bench/frontend_phonemes.py`).

Behaviour on unusual input (tested in ``tests/test_orchestrator_text.py``):

- accents are folded (``café`` → ``cafe``); emoji and other symbols without a spoken form are dropped;
- letters of non-Latin scripts raise :class:`TextError` (the tiny preset speaks English);
- a token over :data:`MAX_TOKEN_CHARS` characters raises :class:`TextError`;
- text that has no speakable word (empty, punctuation only, emoji only) yields no words; the
  orchestrator reports a final turn without words as an error.

The vocabulary (:class:`UnitVocabulary`) is fixed by the phoneme inventory and the F0 buckets and is
saved as a standard ``PreTrainedTokenizerFast`` (word-level, whitespace split).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from streamchar.data.phonemes import ESPEAK_PHONEMES, PHONEMES, SILENCE, SILENCE_ID, F0Buckets, phoneme_id

logger = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 64


class TextError(ValueError):
    """Text the frontend cannot speak; the message says what to send instead."""


# -- boundaries -----------------------------------------------------------------------------------
WORD_BOUNDARY = "<w>"
BOUNDARIES: tuple[str, ...] = (WORD_BOUNDARY, "<,>", "<.>", "<?>", "<!>")
_PUNCT_BOUNDARY = {
    ",": "<,>", ";": "<,>", ":": "<,>", "—": "<,>", "–": "<,>", "…": "<.>",
    ".": "<.>", "?": "<?>", "!": "<!>",
}  # fmt: skip
_BOUNDARY_RANK = {b: i for i, b in enumerate(BOUNDARIES)}
_BOUNDARY_TEXT = {"<w>": "", "<,>": ",", "<.>": ".", "<?>": "?", "<!>": "!"}


@dataclass(frozen=True)
class Word:
    """A spoken word (Latin letters and apostrophes) and the boundary that follows it."""

    text: str
    boundary: str = WORD_BOUNDARY

    @property
    def written(self) -> str:
        """The word as espeak should read it, with its closing punctuation."""
        return self.text + _BOUNDARY_TEXT[self.boundary]


def _stronger(a: str, b: str) -> str:
    return a if _BOUNDARY_RANK[a] >= _BOUNDARY_RANK[b] else b


# -- numbers --------------------------------------------------------------------------------------
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip
MONTHS = ("january february march april may june july august september october november december").split()


def number_words(n: int) -> list[str]:
    """Cardinal ``n`` in words: ``1234`` → ``one thousand two hundred thirty four``."""
    if n < 0:
        return ["minus", *number_words(-n)]
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])
    for scale, name in _SCALES:
        if n >= scale:
            if n // scale >= 1000 and scale == _SCALES[0][0]:
                return [d for ch in str(n) for d in number_words(int(ch))]  # beyond trillions: digits
            head = number_words(n // scale) + [name]
            return head + (number_words(n % scale) if n % scale else [])
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> list[str]:
    words = number_words(n)
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return words


def year_words(n: int) -> list[str]:
    """A four-digit year as people say it: 1999 → nineteen ninety nine, 2005 → two thousand five."""
    hi, lo = divmod(n, 100)
    if n % 1000 < 10 and n // 1000 == 2:  # 2000..2009
        return number_words(n)
    if lo == 0:
        return number_words(hi) + ["hundred"]
    if lo < 10:
        return number_words(hi) + ["oh"] + number_words(lo)
    return number_words(hi) + number_words(lo)


def _decimal_words(whole: str, frac: str) -> list[str]:
    return number_words(int(whole or "0")) + ["point"] + [_ONES[int(d)] for d in frac]


# -- abbreviations and symbols ---------------------------------------------------------------------
ABBREVIATIONS = {
    "dr": "doctor", "mr": "mister", "mrs": "missus", "ms": "miz", "st": "saint", "jr": "junior",
    "sr": "senior", "prof": "professor", "vs": "versus", "etc": "et cetera", "approx": "approximately",
    "dept": "department", "mt": "mount", "e.g": "for example", "i.e": "that is",
    "jan": "january", "feb": "february", "mar": "march", "apr": "april", "jun": "june", "jul": "july",
    "aug": "august", "sep": "september", "sept": "september", "oct": "october", "nov": "november",
    "dec": "december", "a.m": "a m", "p.m": "p m",
}  # fmt: skip
SYMBOLS = {"&": "and", "+": "plus", "=": "equals", "@": "at", "%": "percent", "#": "number"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", "sen", "sen")}  # fmt: skip
_QUOTES = "\"'“”‘’«»()[]{}<>"
_TRAILING = ",;:.?!…—–-" + _QUOTES


def _fold(text: str) -> str:
    """Unicode to plain Latin: compatibility forms, accents removed, typographic quotes unified."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')


def _check_script(token: str) -> None:
    for ch in token:
        if ch.isalpha() and not ("a" <= ch.lower() <= "z"):
            script = unicodedata.name(ch, "unknown").split()[0].title()
            raise TextError(
                f"'{token}' contains {script} letters, which this orchestrator cannot speak; "
                "send English text in Latin script (transliterate other scripts first)."
            )


def _speakable(ch: str) -> bool:
    return ch.isalnum() or ch in "'.,;:?!-$£€¥%&+=@#/…—–" or ch in _QUOTES


_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_ORDINAL = re.compile(r"^(\d+)(st|nd|rd|th)$", re.IGNORECASE)
_DECADE = re.compile(r"^(\d{3}0)'?s$")
_NUMBER = re.compile(r"^-?\d{1,3}(,\d{3})+$|^-?\d+$")
_DECIMAL = re.compile(r"^(-?)(\d*)\.(\d+)$")
_MONEY = re.compile(r"^([$£€¥])(\d[\d,]*)(?:\.(\d{1,2}))?$")


def _expand(core: str) -> list[str]:
    """Spoken words of one token without its surrounding punctuation (may contain inner ``-``/``/``)."""
    lower = core.lower()
    if lower.rstrip(".") in ABBREVIATIONS and (core.endswith(".") or "." in lower):
        return ABBREVIATIONS[lower.rstrip(".")].split()
    if m := _TIME.match(core):
        hours, minutes = int(m[1]), int(m[2])
        if hours < 24 and minutes < 60:
            tail = (
                []
                if minutes == 0
                else (["oh", *number_words(minutes)] if minutes < 10 else number_words(minutes))
            )
            return number_words(hours) + (tail or ["o'clock"])
    if m := _ISO_DATE.match(core):
        year, month, day = int(m[1]), int(m[2]), int(m[3])
        if 1 <= month <= 12 and 1 <= day <= 31:
            return [MONTHS[month - 1], *ordinal_words(day), *year_words(year)]
    if m := _US_DATE.match(core):
        month, day, year = int(m[1]), int(m[2]), int(m[3])
        if 1 <= month <= 12 and 1 <= day <= 31:
            return [MONTHS[month - 1], *ordinal_words(day), *year_words(year)]
    if m := _MONEY.match(core):
        one, many, sub_one, sub_many = _CURRENCY[m[1]]
        amount = int(m[2].replace(",", ""))
        words = number_words(amount) + [one if amount == 1 else many]
        if m[3] and int(m[3]):
            cents = int(m[3].ljust(2, "0"))
            words += ["and", *number_words(cents), sub_one if cents == 1 else sub_many]
        return words
    if core.endswith("%") and (_NUMBER.match(core[:-1]) or _DECIMAL.match(core[:-1])):
        return _expand(core[:-1]) + ["percent"]
    if m := _ORDINAL.match(core):
        return ordinal_words(int(m[1]))
    if m := _DECADE.match(core):
        words = year_words(int(m[1])) if 1100 <= int(m[1]) <= 2099 else number_words(int(m[1]))
        last = words[-1]
        words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "s"
        return words
    if _NUMBER.match(core):
        n = int(core.replace(",", ""))
        if "," not in core and 1100 <= n <= 2099 and not core.startswith("-"):
            return year_words(n)
        return number_words(n)
    if m := _DECIMAL.match(core):
        return (["minus"] if m[1] else []) + _decimal_words(m[2], m[3])
    if re.search(r"\w[-/]\w", core):  # well-known, 3rd-rate, and/or: each part on its own
        return [w for part in re.split(r"[-/]", core) if part for w in _expand(part)]
    words: list[str] = []
    for part in re.split(r"([&+=@%#$£€¥/\-]|\d+)", core):
        if not part:
            continue
        if part.isdigit():
            words += number_words(int(part))
        elif part in SYMBOLS:
            words.append(SYMBOLS[part])
        elif part in _CURRENCY:
            words.append(_CURRENCY[part][1])
        elif part in "/-":
            continue
        else:
            words += [w for w in re.split(r"[^A-Za-z']+", part) if w.strip("'")]
    return words


def normalize_token(token: str) -> list[Word]:
    """The spoken words of one whitespace-free token, the last carrying the token's punctuation.

    ``"$5.50,"`` → five dollars and fifty cents ``<,>``; ``"Dr."`` → doctor; ``"2026-11-22"`` →
    november twenty second twenty twenty six; ``"🙂"`` → nothing.
    """
    token = _fold(token)
    token = "".join(ch for ch in token if _speakable(ch) or ch.isalpha())
    _check_script(token)
    if len(token) > MAX_TOKEN_CHARS:
        raise TextError(
            f"A {len(token)}-character token ('{token[:24]}...') is too long to be a word; "
            f"split it with spaces (at most {MAX_TOKEN_CHARS} characters per word)."
        )
    core = token.lstrip(_QUOTES)
    boundary = WORD_BOUNDARY
    # trailing punctuation sets the boundary; an abbreviation keeps its own period
    while core and core[-1] in _TRAILING:
        if core[-1] == "." and core[:-1].lower() in ABBREVIATIONS:
            break
        if core[-1] == "%" or (core[-1] == "." and re.fullmatch(r"(\w\.)+\w", core[:-1])):
            break
        mark = core[-1]
        if mark == "." and core.endswith("..."):
            mark = "…"
        boundary = _stronger(boundary, _PUNCT_BOUNDARY.get(mark, WORD_BOUNDARY))
        core = core[:-1]
    if not core:
        return [Word("", boundary)] if boundary != WORD_BOUNDARY else []
    words = _expand(core)
    if not words:
        return [Word("", boundary)] if boundary != WORD_BOUNDARY else []
    return [Word(w) for w in words[:-1]] + [Word(words[-1], boundary)]


def normalize(text: str) -> str:
    """Whole-text normalisation, as the streaming frontend sees it: ``"Dr. Li paid $5."`` →
    ``"doctor Li paid five dollars."``."""
    stream = WordStream()
    return " ".join(w.written for w in stream.push(text, final=True))


class WordStream:
    """Whole words out of text that arrives in pieces.

    A word is released when the next speakable token has begun (so trailing punctuation that
    arrives as its own token, like a spaced dash, still reaches it) or when the text is final.
    The same text split anywhere gives the same words.
    """

    def __init__(self) -> None:
        self._partial = ""  # characters of a token not yet ended by whitespace
        self._held: Word | None = None  # the last complete word, waiting for its closing punctuation

    def push(self, text: str, final: bool = False) -> list[Word]:
        released: list[Word] = []
        pieces = re.split(r"\s+", self._partial + text) if text else [self._partial]
        self._partial = "" if final else pieces.pop()
        for token in pieces:
            if not token:
                continue
            for word in normalize_token(token):
                if not word.text:  # punctuation only: closes the held word
                    if self._held is not None:
                        self._held = Word(self._held.text, _stronger(self._held.boundary, word.boundary))
                    continue
                if self._held is not None:
                    released.append(self._held)
                self._held = word
        if final and self._held is not None:
            released.append(self._held)
            self._held = None
        return released

    def copy(self) -> WordStream:
        other = WordStream()
        other._partial, other._held = self._partial, self._held
        return other

    @property
    def pending_chars(self) -> int:
        return len(self._partial)

    @property
    def pending_words(self) -> int:
        """Words begun but not released yet (the held word, and a token still being typed)."""
        return (self._held is not None) + bool(self._partial)


# -- phonemes -------------------------------------------------------------------------------------
class Frontend:
    """Words to inventory phoneme ids with espeak-ng, each word read with the word after it."""

    def __init__(self, language: str = "en-us", cache_size: int = 4096) -> None:
        from streamchar.data.phonemizer import get_phonemizer

        self.language = language
        self._espeak = get_phonemizer()
        self._cache: OrderedDict[str, list[list[str]]] = OrderedDict()  # text -> espeak's word groups
        self._cache_size = cache_size

    def _groups(self, text: str) -> list[list[str]]:
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        groups = self._cache[text] = self._espeak.words(text, self.language)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return groups

    def phonemes(self, word: Word, next_word: Word | None) -> tuple[int, ...]:
        """Phoneme ids of ``word`` as spoken before ``next_word`` (None: the end of the text)."""
        alone = self._groups(word.written)
        chosen = [p for g in alone for p in g]
        if next_word is not None and len(alone) == 1:
            # the word is the first group when espeak kept the two words apart; else it is read alone
            groups = self._groups(f"{word.written} {next_word.written}")
            if len(groups) >= 2:
                chosen = groups[0]
        return tuple(i for i in (phoneme_id(p) for p in chosen) if i != SILENCE_ID)

    def sentence(self, text: str) -> list[tuple[Word, tuple[int, ...]]]:
        """All words of a complete text with their phonemes."""
        words = WordStream().push(text, final=True)
        return [
            (w, self.phonemes(w, words[i + 1] if i + 1 < len(words) else None)) for i, w in enumerate(words)
        ]


# -- vocabulary -----------------------------------------------------------------------------------
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
SPEAKER_TOKENS: tuple[str, ...] = ("<spk0>", "<spk1>")
END_OF_TEXT = "<eot>"
END_OF_SPEECH = "<end>"
NO_NEXT = "<nil>"  # the pointer cue when no phoneme is left to advance into
TEMPO_BINS = 12
TEMPO_RANGE = (1.4, 3.2)  # frames per phoneme, log-spaced bins


def unit_token(phoneme: int, bucket: int) -> str:
    name = "sil" if phoneme == SILENCE_ID else PHONEMES[phoneme]
    return f"[{name}|{bucket}]"


class UnitVocabulary:
    """Token strings and ids of the unit language model.

    Layout: specials, speakers, ``<eot>``, ``<end>``, ``<nil>``, tempo bins, boundaries, transcript
    phonemes (``/h/``, also the pointer's cue before each frame), then frame units in unit-id order
    (``[h|3]`` = phoneme ``h``, F0 bucket 3), so that ``token id = unit_offset + unit``.
    """

    def __init__(self, buckets: F0Buckets | None = None) -> None:
        self.buckets = buckets or F0Buckets()
        tempo = tuple(f"<tempo{i}>" for i in range(TEMPO_BINS))
        phones = tuple(f"/{p}/" for p in ESPEAK_PHONEMES)
        units = tuple(unit_token(p, b) for p in range(len(PHONEMES)) for b in range(self.buckets.size))
        head = (*SPECIAL_TOKENS, *SPEAKER_TOKENS, END_OF_TEXT, END_OF_SPEECH, NO_NEXT, *tempo, *BOUNDARIES)
        self.tokens: tuple[str, ...] = (*head, *phones, *units)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad, self.bos, self.eos = (self.ids[t] for t in SPECIAL_TOKENS[:3])
        self.eot, self.end, self.no_next = self.ids[END_OF_TEXT], self.ids[END_OF_SPEECH], self.ids[NO_NEXT]
        self.phoneme_offset = len(head) - 1  # phoneme id p (>= 1) -> phoneme_offset + p
        self.unit_offset = len(head) + len(phones)
        self.num_units = len(units)

    def __len__(self) -> int:
        return len(self.tokens)

    def speaker(self, index: int) -> int:
        if index not in (0, 1):
            raise ValueError(f"speaker must be 0 or 1, got {index}.")
        return self.ids[SPEAKER_TOKENS[index]]

    def tempo(self, frames_per_phoneme: float) -> int:
        lo, hi = TEMPO_RANGE
        import math

        x = (math.log(max(frames_per_phoneme, 1e-3)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return self.ids[f"<tempo{min(max(int(x * TEMPO_BINS), 0), TEMPO_BINS - 1)}>"]

    def boundary(self, name: str) -> int:
        return self.ids[name]

    def phoneme(self, pid: int) -> int:
        return self.phoneme_offset + pid

    def unit(self, unit: int) -> int:
        return self.unit_offset + unit

    def unit_of(self, token: int) -> int | None:
        """The unit id of a frame-unit token, None for any other token."""
        u = token - self.unit_offset
        return u if 0 <= u < self.num_units else None

    def unit_phoneme(self, unit: int) -> int:
        return unit // self.buckets.size

    def word_tokens(self, word: Word, phonemes: tuple[int, ...]) -> list[int]:
        return [self.phoneme(p) for p in phonemes] + [self.boundary(word.boundary)]

    def tokenizer(self):
        """A ``PreTrainedTokenizerFast`` over this vocabulary (word level, whitespace split)."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        core = Tokenizer(models.WordLevel(vocab=dict(self.ids), unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
            additional_special_tokens=[*SPEAKER_TOKENS, END_OF_TEXT, END_OF_SPEECH, NO_NEXT],
        )  # fmt: skip

    def check_tokenizer(self, tokenizer, where: str | Path) -> None:
        """Refuse a saved tokenizer whose vocabulary differs from this one."""
        vocab = tokenizer.get_vocab()
        if len(vocab) != len(self.tokens) or any(vocab.get(t) != i for i, t in enumerate(self.tokens)):
            raise ValueError(
                f"The tokenizer in {where} does not match this StreamChar version's unit vocabulary "
                f"({len(vocab)} vs {len(self.tokens)} tokens); retrain the orchestrator or use a matching release."
            )


__all__ = [
    "BOUNDARIES",
    "Frontend",
    "MONTHS",
    "SILENCE",
    "TextError",
    "UnitVocabulary",
    "Word",
    "WordStream",
    "normalize",
    "normalize_token",
    "number_words",
    "ordinal_words",
    "year_words",
]
