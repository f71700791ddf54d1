"""The text frontend: normalisation, streaming word release, phonemes, vocabulary and tokenizer."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamchar.orchestrator.text import (
    MAX_TOKEN_CHARS,
    Frontend,
    TextError,
    UnitVocabulary,
    Word,
    WordStream,
    normalize,
    number_words,
    ordinal_words,
    year_words,
)


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("I have 3 cats.", "I have three cats."),
        ("It costs $5.50, really!", "It costs five dollars and fifty cents, really!"),
        ("Dr. Smith met Mr. Jones", "doctor Smith met mister Jones"),
        ("On 2026-11-22 we met", "On november twenty second twenty twenty six we met"),
        ("on 12/25/2026", "on december twenty fifth twenty twenty six"),
        ("at 3:45 or 7:05", "at three forty five or seven oh five"),
        ("In 1999 and 2005", "In nineteen ninety nine and two thousand five"),
        ("the 1990s", "the nineteen nineties"),
        ("50% off", "fifty percent off"),
        ("1,234,567 stars", "one million two hundred thirty four thousand five hundred sixty seven stars"),
        ("pi is 3.14", "pi is three point one four"),
        ("the 21st and 3rd-rate", "the twenty first and third rate"),
        ("-4 degrees", "minus four degrees"),
        ("rock & roll", "rock and roll"),
        ("e.g. apples", "for example apples"),
        ("“Quoted,” she said...", "Quoted, she said."),
        ("café résumé", "cafe resume"),
        ("Hello 🙂 world", "Hello world"),
        ("wait — what?", "wait, what?"),
        ("I said no. No way", "I said no. No way"),
    ],
)
def test_normalize(text, spoken):
    assert normalize(text) == spoken


def test_number_words_reference():
    assert number_words(0) == ["zero"]
    assert number_words(115) == ["one", "hundred", "fifteen"]
    assert number_words(2_000_001) == ["two", "million", "one"]
    assert ordinal_words(12) == ["twelfth"] and ordinal_words(40) == ["fortieth"]
    assert year_words(1905) == ["nineteen", "oh", "five"] and year_words(2000) == ["two", "thousand"]


@pytest.mark.parametrize("text", ["", "   ", "...!?", "🙂🎉", "— ,"])
def test_nothing_speakable_gives_no_words(text):
    assert WordStream().push(text, final=True) == []


@pytest.mark.parametrize("text", ["Привет мир", "hello 世界", "مرحبا"])
def test_non_latin_scripts_raise(text):
    with pytest.raises(TextError, match="Latin script"):
        normalize(text)


def test_overlong_token_raises():
    with pytest.raises(TextError, match="too long"):
        normalize("a" * (MAX_TOKEN_CHARS + 1))


_TOKENS = st.sampled_from(
    [
        "hello",
        "world,",
        "Dr.",
        "$5.50",
        "3:45",
        "1999",
        "yes!",
        "why?",
        "—",
        "well-known",
        "e.g.",
        "42%",
        "it's",
    ]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_TOKENS, min_size=1, max_size=12), st.data())
def test_word_release_does_not_depend_on_splits(tokens, data):
    text = " ".join(tokens)
    whole = WordStream().push(text, final=True)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    stream, words, last = WordStream(), [], 0
    for cut in cuts:
        words += stream.push(text[last:cut])
        last = cut
    words += stream.push(text[last:], final=True)
    assert words == whole


def test_words_wait_for_the_next_token():
    stream = WordStream()
    assert stream.push("Hello wor") == []  # "Hello" could still get punctuation
    assert stream.push("ld ") == [Word("Hello")]
    assert stream.push("— ok", final=True) == [Word("world", "<,>"), Word("ok")]


def test_frontend_phonemes_use_the_next_word():
    frontend = Frontend()
    before_vowel = frontend.phonemes(Word("the"), Word("apple"))
    before_consonant = frontend.phonemes(Word("the"), Word("pear"))
    assert before_vowel != before_consonant  # espeak: D i vs D @
    assert all(isinstance(p, int) and p > 0 for p in before_vowel)


def test_vocabulary_and_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    vocab = UnitVocabulary()
    assert vocab.unit_of(vocab.unit(37)) == 37 and vocab.unit_of(vocab.eot) is None
    vocab.tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    vocab.check_tokenizer(tokenizer, tmp_path)
    text = "<spk0> <tempo3> /h/ /@/ /l/ /oU/ <,> [h|0] [@|4] <end>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == [vocab.ids[t] for t in text.split()]
