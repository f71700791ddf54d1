"""The phoneme inventory, visemes, and frame units shared by the corpus, the latent cache and the
orchestrator.

Phonemes are espeak-ng's English mnemonics (as its phoneme events report them for the en-us and en voices).
Index 0 is silence: pauses and time outside any phoneme. Visemes follow the common 15-class set
(sil, PP, FF, TH, DD, kk, CH, SS, nn, RR, aa, E, ih, oh, ou). A frame unit is
(phoneme or silence) x a coarse F0 bucket, the token the orchestrator emits per audio frame.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

SILENCE = "<sil>"

# espeak-ng English phoneme mnemonics, measured from its phoneme events over 6,000 CMU-dictionary
# words with the en-us and en (British) voices.
ESPEAK_PHONEMES: tuple[str, ...] = (
    # consonants
    "p", "b", "m", "f", "v", "T", "D", "t", "d", "t#", "t2", "n", "n-", "l", "k", "g", "N", "x", "?",
    "h", "tS", "dZ", "S", "Z", "s", "z", "r", "r-", "w", "j", ";",
    # vowels and diphthongs
    "a", "aa", "a#", "A:", "A@", "aI", "aI@", "aI3", "aU", "V", "E", "e@", "eI", "3", "3:", "@", "@2",
    "@-", "@L", "I", "I2", "I#", "i", "i:", "i@", "i@3", "0", "O:", "O@", "O2", "o@", "oU", "OI", "u:",
    "U", "U@",
)  # fmt: skip

PHONEMES: tuple[str, ...] = (SILENCE, *ESPEAK_PHONEMES)
PHONEME_TO_ID: dict[str, int] = {p: i for i, p in enumerate(PHONEMES)}
SILENCE_ID = 0

VISEMES: tuple[str, ...] = (
    "sil",
    "PP",
    "FF",
    "TH",
    "DD",
    "kk",
    "CH",
    "SS",
    "nn",
    "RR",
    "aa",
    "E",
    "ih",
    "oh",
    "ou",
)
VISEME_TO_ID: dict[str, int] = {v: i for i, v in enumerate(VISEMES)}


@dataclass(frozen=True)
class MouthTarget:
    """Articulation target of a viseme; all values in [0, 1].

    ``dominance`` is how strongly the target resists its neighbours in the coarticulation blend
    (bilabial closures high, tongue-internal consonants low); ``sharpness`` is how fast that
    dominance decays with distance in time (1/s).
    """

    open: float
    width: float
    round: float
    teeth: float
    tongue: float
    dominance: float
    sharpness: float


VISEME_TARGETS: dict[str, MouthTarget] = {
    "sil": MouthTarget(0.02, 0.50, 0.05, 0.0, 0.0, 0.60, 36.0),
    "PP": MouthTarget(0.00, 0.45, 0.15, 0.0, 0.0, 1.50, 80.0),
    "FF": MouthTarget(0.08, 0.52, 0.00, 1.0, 0.0, 1.50, 70.0),
    "TH": MouthTarget(0.14, 0.52, 0.00, 0.8, 1.0, 1.20, 60.0),
    "DD": MouthTarget(0.14, 0.52, 0.00, 0.6, 0.3, 0.50, 50.0),
    "kk": MouthTarget(0.20, 0.50, 0.05, 0.3, 0.0, 0.30, 44.0),
    "CH": MouthTarget(0.16, 0.32, 0.75, 0.9, 0.0, 1.40, 60.0),
    "SS": MouthTarget(0.07, 0.62, 0.00, 1.0, 0.0, 1.20, 60.0),
    "nn": MouthTarget(0.20, 0.52, 0.00, 0.5, 0.8, 0.50, 50.0),
    "RR": MouthTarget(0.42, 0.38, 0.55, 0.3, 0.0, 0.90, 50.0),
    "aa": MouthTarget(0.95, 0.56, 0.10, 0.4, 0.2, 0.60, 40.0),
    "E": MouthTarget(0.62, 0.66, 0.00, 0.5, 0.1, 0.55, 40.0),
    "ih": MouthTarget(0.44, 0.78, 0.00, 0.7, 0.0, 0.55, 40.0),
    "oh": MouthTarget(0.75, 0.34, 0.80, 0.2, 0.1, 0.60, 40.0),
    "ou": MouthTarget(0.40, 0.24, 1.00, 0.0, 0.0, 0.70, 44.0),
}

# phonemes produced with the vocal folds vibrating (vowels, nasals, liquids, glides, voiced obstruents)
VOICED_PHONEMES: frozenset[str] = frozenset(
    {"b", "d", "g", "v", "D", "z", "Z", "dZ", "m", "n", "n-", "N", "l", "r", "r-", "w", "j"}
    | {p for p in ESPEAK_PHONEMES if p[0] in "aAeEiIoOuUV03@"}
)

# phoneme -> one viseme, or two for diphthongs (first half, second half)
_PHONEME_VISEMES: dict[str, tuple[str, ...]] = {
    "p": ("PP",), "b": ("PP",), "m": ("PP",),
    "f": ("FF",), "v": ("FF",),
    "T": ("TH",), "D": ("TH",),
    "t": ("DD",), "d": ("DD",), "t#": ("DD",), "t2": ("DD",),
    "n": ("nn",), "n-": ("nn",), "l": ("nn",),
    "k": ("kk",), "g": ("kk",), "N": ("kk",), "x": ("kk",), "?": ("kk",), "h": ("kk",),
    "tS": ("CH",), "dZ": ("CH",), "S": ("CH",), "Z": ("CH",),
    "s": ("SS",), "z": ("SS",),
    "r": ("RR",), "r-": ("RR",), "w": ("ou",), "j": ("ih",), ";": ("ih",),
    "a": ("aa",), "aa": ("aa",), "a#": ("aa",), "A:": ("aa",), "A@": ("aa", "RR"), "V": ("aa",),
    "aI": ("aa", "ih"), "aI@": ("aa", "ih"), "aI3": ("aa", "ih"), "aU": ("aa", "ou"),
    "E": ("E",), "e@": ("E", "RR"), "eI": ("E", "ih"), "3": ("E",), "3:": ("RR",),
    "@": ("E",), "@2": ("E",), "@-": ("E",), "@L": ("E", "nn"),
    "I": ("ih",), "I2": ("ih",), "I#": ("ih",), "i": ("ih",), "i:": ("ih",), "i@": ("ih", "E"),
    "i@3": ("ih", "E"),
    "0": ("oh",), "O:": ("oh",), "O@": ("oh", "RR"), "O2": ("oh",), "o@": ("oh", "RR"),
    "oU": ("oh", "ou"), "OI": ("oh", "ih"), "u:": ("ou",), "U": ("ou",), "U@": ("ou", "E"),
}  # fmt: skip

# ARPAbet (CMU dictionary, Montreal Forced Aligner's English models) -> espeak mnemonics; stress
# digits are dropped except that unstressed AH is schwa.
ARPABET_TO_ESPEAK: dict[str, str] = {
    "AA": "A:", "AE": "a", "AH": "V", "AH0": "@", "AO": "O:", "AW": "aU", "AY": "aI", "B": "b", "CH": "tS",
    "D": "d", "DH": "D", "EH": "E", "ER": "3:", "EY": "eI", "F": "f", "G": "g", "HH": "h", "IH": "I",
    "IY": "i:", "JH": "dZ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "N", "OW": "oU", "OY": "OI",
    "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t", "TH": "T", "UH": "U", "UW": "u:", "V": "v", "W": "w",
    "Y": "j", "Z": "z", "ZH": "Z",
}  # fmt: skip
_ARPABET_SILENCE = frozenset({"", "sil", "sp", "spn", "<eps>", "SIL", "SP", "SPN"})


def arpabet_to_espeak(label: str) -> str:
    """An ARPAbet phone (``AH0``, ``T``, ``sil``) as an inventory phoneme (silence for pauses)."""
    label = label.strip()
    if label in _ARPABET_SILENCE:
        return SILENCE
    if label in ARPABET_TO_ESPEAK:
        return ARPABET_TO_ESPEAK[label]
    base = label.rstrip("012").upper()
    if base in ARPABET_TO_ESPEAK:
        return ARPABET_TO_ESPEAK[base]
    return canonical_phoneme(label)


_warned: set[str] = set()


def canonical_phoneme(label: str) -> str:
    """Map an espeak phoneme mnemonic onto the inventory; pauses become :data:`SILENCE`.

    Unknown mnemonics (other espeak versions or languages) drop their trailing modifiers (digits,
    ``#``, ``-``, ``:``) until a known one is found, else become schwa, with one warning each.
    """
    if not label or label.startswith("_") or label in ("|", "||"):
        return SILENCE
    if label in PHONEME_TO_ID:
        return label
    stripped = label
    while stripped and stripped not in PHONEME_TO_ID:
        stripped = re.sub(r"[0-9#\-:;]$", "", stripped) if re.search(r"[0-9#\-:;]$", stripped) else ""
    result = stripped or "@"
    if label not in _warned:
        _warned.add(label)
        logger.warning("espeak phoneme %r is not in the inventory; using %r", label, result)
    return result


def phoneme_id(label: str) -> int:
    return PHONEME_TO_ID[canonical_phoneme(label)]


def phoneme_visemes(label: str) -> tuple[str, ...]:
    phoneme = canonical_phoneme(label)
    if phoneme == SILENCE:
        return ("sil",)
    return _PHONEME_VISEMES[phoneme]


# -- per-frame phoneme ids and units ------------------------------------------------------------
def voiced_mask(phoneme_ids: np.ndarray) -> np.ndarray:
    """True where the phoneme id is a voiced phoneme."""
    voiced = np.array([p in VOICED_PHONEMES for p in PHONEMES])
    return voiced[np.asarray(phoneme_ids)]


def frame_phoneme_ids(
    phonemes: list[tuple[str, float, float]], num_frames: int, frame_rate: float
) -> np.ndarray:
    """Phoneme id active at the centre of each frame: ``int64 [num_frames]`` (0 = silence)."""
    ids = np.zeros(num_frames, dtype=np.int64)
    centres = (np.arange(num_frames) + 0.5) / frame_rate
    for label, start, end in phonemes:
        pid = phoneme_id(label)
        if pid == SILENCE_ID:
            continue
        mask = (centres >= start) & (centres < end)
        ids[mask] = pid
    return ids


@dataclass(frozen=True)
class F0Buckets:
    """Coarse log-F0 buckets: 0 is unvoiced, 1..num_buckets span [f_min, f_max] on a log scale."""

    num_buckets: int = 8
    f_min: float = 70.0
    f_max: float = 400.0

    def bucket(self, f0_hz: np.ndarray) -> np.ndarray:
        f0 = np.asarray(f0_hz, dtype=np.float64)
        voiced = f0 > 0
        pos = (np.log(np.clip(f0, self.f_min, self.f_max)) - math.log(self.f_min)) / (
            math.log(self.f_max) - math.log(self.f_min)
        )
        buckets = 1 + np.minimum((pos * self.num_buckets).astype(np.int64), self.num_buckets - 1)
        return np.where(voiced, buckets, 0)

    @property
    def size(self) -> int:
        return self.num_buckets + 1


def frame_units(phoneme_ids: np.ndarray, f0_buckets: np.ndarray, buckets: F0Buckets) -> np.ndarray:
    """unit = phoneme_id * (num_buckets + 1) + f0_bucket; silence frames carry bucket 0."""
    f0b = np.where(phoneme_ids == SILENCE_ID, 0, f0_buckets)
    return phoneme_ids.astype(np.int64) * buckets.size + f0b.astype(np.int64)


def num_units(buckets: F0Buckets) -> int:
    return len(PHONEMES) * buckets.size


def buckets_per_phoneme(units: int) -> int:
    """The ``buckets.size`` of a unit set of ``units`` units (the inverse of :func:`num_units`)."""
    if units % len(PHONEMES):
        raise ValueError(
            f"{units} units are not a whole number of F0 buckets per phoneme ({len(PHONEMES)} phonemes)."
        )
    return units // len(PHONEMES)
