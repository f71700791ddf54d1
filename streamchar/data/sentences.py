"""A sentence generator for the synthetic corpus.

Sentences come from templates whose slots draw on word classes written here (nouns, verbs with
their past forms, adjectives, adverbs, names, places, times, numbers spelled out), plus an open
slot filled from the CMU pronouncing dictionary that the ``pocketsphinx`` package ships, which
widens the vocabulary to tens of thousands of words. Output is already normalised for speech: no
digits, no abbreviations. A sentence belongs to the held-out set when a stable hash of its text
falls below the held-out fraction, so train and test never share a sentence.
"""

from __future__ import annotations

import logging
import re
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

NOUNS = """
apple garden window table chair river mountain teacher doctor pencil paper letter island kitchen
bridge forest ocean castle market village station engine rocket planet camera guitar piano violin
basket bottle candle blanket pillow mirror ladder hammer bucket shovel wagon bicycle helmet jacket
sweater button pocket wallet ticket poster picture painting story poem song riddle puzzle secret
answer question problem reason promise message signal shadow thunder weather morning evening
sunset harbor tower palace temple museum library theater stadium airport factory office bakery
farmer sailor pilot driver painter singer dancer writer baker artist student neighbor stranger
captain soldier tailor gardener plumber lawyer nurse chef dragon rabbit turtle monkey tiger
lion zebra giraffe elephant kitten puppy pony donkey camel parrot eagle owl penguin dolphin whale
shark lobster spider beetle butterfly dinosaur robot wizard princess knight pirate giant
carpet curtain cushion drawer closet cabinet fountain statue lantern compass anchor feather
pebble crystal diamond marble velvet ribbon needle thread cotton leather wooden silver golden
dinner breakfast lunch supper picnic festival holiday birthday wedding journey voyage adventure
mystery lesson homework exam notebook folder envelope package parcel present treasure coin
tomato potato carrot onion pepper lemon orange banana cherry melon peach pear grape berry
cookie biscuit muffin pancake sandwich noodle pizza burger salad soup cheese butter honey sugar
coffee tea juice water milk chocolate vanilla cinnamon garlic ginger meadow valley canyon desert
glacier volcano jungle swamp prairie cliff beach shore lake pond stream creek waterfall
cloud rainbow storm breeze blizzard lightning moonlight sunlight starlight comet galaxy orbit
computer keyboard monitor printer speaker phone tablet battery cable charger server network
signal password website browser program engineer scientist chemist biologist professor
professor mayor senator judge jury witness detective thief prisoner guard officer
umbrella raincoat boot slipper sandal scarf glove mitten necklace bracelet earring ring crown
trumpet drum flute harp cello banjo trombone whistle orchestra audience concert
""".split()

IRREGULAR_PLURALS = {"mouse": "mice", "child": "children", "person": "people", "man": "men", "woman": "women",
                     "knife": "knives", "leaf": "leaves", "wolf": "wolves", "foot": "feet", "tooth": "teeth"}  # fmt: skip

ADJECTIVES = """
red blue green yellow purple orange golden silver bright dark quiet loud gentle brave clever
curious happy sleepy hungry thirsty lucky tiny huge heavy light warm cold cool hot fresh sweet
sour bitter salty spicy smooth rough soft hard shiny dusty muddy wet dry empty full busy lazy
friendly grumpy polite proud shy silly serious strange famous ancient modern simple fancy plain
careful careless wild calm noisy peaceful rapid slow swift steady sudden gradual narrow wide
deep shallow tall short long round square flat sharp dull clean dirty cheerful gloomy elegant
clumsy graceful fierce tender honest humble eager anxious patient nervous jolly merry crisp
fragile sturdy hollow solid frozen melted rusty wooden plastic metal glass paper velvet silky
fuzzy fluffy prickly slippery sticky crunchy juicy tasty delicious magnificent marvelous
wonderful terrible horrible lovely pleasant awful remarkable ordinary unusual peculiar mysterious
enormous miniature distant nearby hidden secret public private early late rare common
""".split()

# (base, past, past participle)
IRREGULAR_VERBS = [
    ("see", "saw", "seen"), ("find", "found", "found"), ("bring", "brought", "brought"),
    ("buy", "bought", "bought"), ("catch", "caught", "caught"), ("draw", "drew", "drawn"),
    ("drive", "drove", "driven"), ("eat", "ate", "eaten"), ("forget", "forgot", "forgotten"),
    ("give", "gave", "given"), ("hide", "hid", "hidden"), ("hold", "held", "held"),
    ("keep", "kept", "kept"), ("make", "made", "made"), ("read", "read", "read"),
    ("ride", "rode", "ridden"), ("sell", "sold", "sold"), ("send", "sent", "sent"),
    ("sing", "sang", "sung"), ("steal", "stole", "stolen"), ("take", "took", "taken"),
    ("teach", "taught", "taught"), ("throw", "threw", "thrown"), ("wear", "wore", "worn"),
    ("write", "wrote", "written"), ("build", "built", "built"), ("break", "broke", "broken"),
    ("choose", "chose", "chosen"), ("feed", "fed", "fed"), ("lose", "lost", "lost"),
    ("meet", "met", "met"), ("paint", "painted", "painted"), ("shake", "shook", "shaken"),
    ("sweep", "swept", "swept"), ("win", "won", "won"), ("wake", "woke", "woken"),
    ("bend", "bent", "bent"), ("dig", "dug", "dug"), ("feel", "felt", "felt"), ("lend", "lent", "lent"),
]  # fmt: skip

REGULAR_VERBS = """
open close clean cook wash paint watch visit carry follow borrow fix mend push pull lift
climb cross order answer repair deliver collect explore measure describe imagine remember notice
discover invent design decorate finish start count polish fold unlock lock check fill empty
paint record protect rescue return sketch study test touch train travel wrap tidy warm cool
""".split()

INTRANSITIVE = [
    ("laugh", "laughed"), ("smile", "smiled"), ("dance", "danced"), ("sleep", "slept"), ("swim", "swam"),
    ("run", "ran"), ("jump", "jumped"), ("sing", "sang"), ("wait", "waited"), ("listen", "listened"),
    ("whisper", "whispered"), ("shout", "shouted"), ("wander", "wandered"), ("rest", "rested"),
    ("travel", "travelled"), ("work", "worked"), ("play", "played"), ("cry", "cried"), ("arrive", "arrived"),
]  # fmt: skip

ADVERBS = """
quickly slowly quietly loudly gently carefully happily sadly suddenly finally easily rarely
often always never sometimes bravely calmly eagerly proudly softly politely patiently nearly
""".split()

NAMES = """
Alice Bruno Clara David Emma Felix Grace Henry Iris Jack Kate Leo Maya Noah Olivia Peter Quinn
Rosa Sam Tara Umar Vera Walter Xena Yusuf Zoe Aaron Bella Carlos Diana Elena Frank Gina Hugo
Ivan Julia Kevin Laura Marco Nina Oscar Paula Ruby Simon Tina Victor Wendy Amir Chloe Dmitri
Fatima Gabriel Hannah Isaac Jasmine Kenji Lucia Mateo Nadia Omar Priya Rahul Sofia Tomas
""".split()

PLACES = """
park garden kitchen library market museum station harbor forest beach village city school office
bakery theater stadium airport hospital castle island mountain valley river lake cafe studio
""".split()

TIMES = [
    "today", "yesterday", "tomorrow", "last night", "this morning", "this evening", "on Monday",
    "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday",
    "in the spring", "in the summer", "in the autumn", "in the winter", "after lunch", "before dinner",
    "at noon", "at midnight", "last week", "next week", "every day", "once a year", "an hour ago",
]  # fmt: skip

PREPOSITIONS = "near behind under beside above inside across along around through past toward".split()
INTERJECTIONS = "Oh Well Look Wow Hey Listen Honestly Actually Okay Goodness".split()

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()  # noqa: E501
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """Spell out ``0 <= n < 1,000,000`` in English words."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words handles 0..999999, got {n}.")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    head = number_words(n // 1000) + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + number_words(rest)


def plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


def _regular_past(verb: str) -> str:
    if verb.endswith("e"):
        return verb + "d"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ied"
    if re.search(r"[^aeiou][aeiou][pbtgmn]$", verb) and len(verb) <= 4:
        return verb + verb[-1] + "ed"
    return verb + "ed"


@lru_cache(maxsize=1)
def _transitive_verbs() -> tuple[tuple[str, str, str], ...]:
    regular = [(v, _regular_past(v), _regular_past(v)) for v in REGULAR_VERBS]
    return tuple(IRREGULAR_VERBS + regular)


@lru_cache(maxsize=1)
def open_vocabulary() -> tuple[str, ...]:
    """Plain lowercase words of 3-10 letters from the CMU dictionary shipped with pocketsphinx
    (empty when that package is not installed)."""
    try:
        import pocketsphinx
    except ImportError:
        logger.warning(
            "pocketsphinx is not installed; the sentence generator uses its built-in word lists only"
        )
        return ()
    path = Path(pocketsphinx.__file__).parent / "model" / "en-us" / "cmudict-en-us.dict"
    if not path.is_file():
        return ()
    words = set()
    with open(path, encoding="utf-8", errors="ignore") as f:
        for line in f:
            word = line.split(" ", 1)[0]
            if re.fullmatch(r"[a-z]{3,10}", word):
                words.add(word)
    return tuple(sorted(words))


def vocabulary_size() -> int:
    closed = set(NOUNS) | set(ADJECTIVES) | set(ADVERBS) | set(PLACES) | {n.lower() for n in NAMES}
    for base, past, pp in _transitive_verbs():
        closed |= {base, past, pp}
    closed |= {w for w, _ in INTRANSITIVE} | {p for _, p in INTRANSITIVE}
    return len(closed | set(open_vocabulary()))


class SentenceGenerator:
    """Draws sentences from templates; ``split`` picks the train or held-out sentences."""

    def __init__(self, rng: np.random.Generator, heldout_fraction: float = 0.1, open_word_rate: float = 0.25):
        self.rng = rng
        self.heldout_fraction = heldout_fraction
        self.open_word_rate = open_word_rate
        self._open = open_vocabulary()
        self._verbs = _transitive_verbs()

    # ---- slot fillers ----
    def _pick(self, items):
        return items[self.rng.integers(len(items))]

    def _noun(self) -> str:
        if self._open and self.rng.random() < self.open_word_rate:
            return self._pick(self._open)
        return self._pick(NOUNS)

    def _np(self, plural_ok: bool = True) -> str:
        """A noun phrase: determiner, optional adjective, noun."""
        noun = self._noun()
        adj = (self._pick(ADJECTIVES) + " ") if self.rng.random() < 0.6 else ""
        r = self.rng.random()
        if plural_ok and r < 0.2:
            return f"{number_words(int(self.rng.integers(2, 30)))} {adj}{plural(noun)}"
        if r < 0.6:
            return f"the {adj}{noun}"
        if r < 0.8:
            article = "an" if (adj or noun)[0] in "aeiou" else "a"
            return f"{article} {adj}{noun}"
        return f"{self._pick(['my', 'your', 'our', 'their', 'his', 'her'])} {adj}{noun}"

    def _template(self) -> str:
        v = self._pick(self._verbs)
        iv = self._pick(INTRANSITIVE)
        templates = [
            lambda: f"{self._np().capitalize()} {v[1]} {self._np()} {self._pick(TIMES)}.",
            lambda: f"{self._pick(NAMES)} {v[1]} {self._np()} {self._pick(PREPOSITIONS)} {self._np(False)}.",
            lambda: f"Did you {v[0]} {self._np()} {self._pick(PREPOSITIONS)} the {self._pick(PLACES)}?",
            lambda: f"I think we should {v[0]} {self._np()} {self._pick(ADVERBS)}.",
            lambda: (
                f"{self._np(False).capitalize()} is {self._pick(ADJECTIVES)} and {self._pick(ADJECTIVES)}."
            ),
            lambda: (
                f"{self._pick(NAMES)} and {self._pick(NAMES)} {iv[1]} {self._pick(ADVERBS)} {self._pick(TIMES)}."
            ),
            lambda: f"Please {v[0]} {self._np()} {self._pick(TIMES)}.",
            lambda: f"Why is {self._np(False)} so {self._pick(ADJECTIVES)}?",
            lambda: (
                f"There are {number_words(int(self.rng.integers(2, 999)))} {plural(self._noun())} in the "
                f"{self._pick(PLACES)}."
            ),
            lambda: f"We went to the {self._pick(PLACES)} {self._pick(TIMES)} and {v[1]} {self._np()}.",
            lambda: f"{self._pick(INTERJECTIONS)}, {self._np(False)} {iv[1]} {self._pick(ADVERBS)}!",
            lambda: f"Have you ever {v[2]} {self._np()}?",
            lambda: f"The word {self._noun()} sounds {self._pick(ADJECTIVES)} to me.",
            lambda: f"{self._pick(NAMES)} said that {self._np(False)} was {self._pick(ADJECTIVES)}.",
            lambda: (
                f"If it rains {self._pick(TIMES)}, we will {v[0]} {self._np()} at the {self._pick(PLACES)}."
            ),
            lambda: f"{self._pick(NAMES)} {self._pick(ADVERBS)} {v[1]} {self._np()}, and then {iv[1]}.",
            lambda: (
                f"It was {number_words(int(self.rng.integers(1, 13)))} o'clock when {self._np(False)} "
                f"{iv[1]}."
            ),
            lambda: f"Could you {v[0]} {self._np()} for {self._pick(NAMES)}?",
        ]
        return templates[self.rng.integers(len(templates))]()

    def sentence(self, split: str = "train", min_words: int = 4, max_words: int = 14) -> str:
        """One sentence of ``split`` ('train' or 'test') with a word count in range."""
        for _ in range(1000):
            text = self._template()
            n = len(text.split())
            if min_words <= n <= max_words and is_heldout(text, self.heldout_fraction) == (split == "test"):
                return text
        raise RuntimeError(
            f"Could not draw a {split} sentence of {min_words}-{max_words} words; widen the range."
        )


def is_heldout(text: str, fraction: float) -> bool:
    """Stable across runs and machines: the CRC32 of the normalised text."""
    key = " ".join(text.lower().split()).encode()
    return (zlib.crc32(key) % 10_000) < fraction * 10_000
