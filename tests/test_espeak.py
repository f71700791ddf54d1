import numpy as np
import pytest

from streamchar.data.espeak import PAUSE_PHONEMES, EspeakError, Voice, get_espeak


def test_words_and_phonemes_have_timings():
    utt = get_espeak().synthesize("Hello big world.", Voice("en-us", "m3"))
    assert utt.sample_rate == 22050 and utt.duration > 0.5
    assert [w.label for w in utt.words] == ["Hello", "big", "world"]
    spoken = [p for p in utt.phonemes if p.label not in PAUSE_PHONEMES]
    assert [p.label for p in spoken][:4] == ["h", "@", "l", "oU"]
    starts = [p.start for p in utt.phonemes]
    assert starts == sorted(starts)
    for a, b in zip(utt.phonemes, utt.phonemes[1:], strict=False):
        assert a.end == pytest.approx(b.start)  # phonemes tile the utterance
    for word in utt.words:
        assert word.start < word.end <= utt.duration + 1e-6


def test_same_text_same_samples_whatever_was_spoken_before():
    engine = get_espeak()
    voice = Voice("en-us", "m3", 50, 50, 165)
    first = engine.synthesize("There are nine pencils in the castle.", voice)
    engine.synthesize("Something else entirely, spoken first.", voice)
    engine.synthesize("And another voice too.", Voice("en", "f2", 70, 80, 190))
    again = engine.synthesize("There are nine pencils in the castle.", voice)
    assert np.array_equal(first.samples, again.samples)
    assert first.phonemes == again.phonemes


def test_voices_differ():
    a = get_espeak().synthesize("Same words here.", Voice("en-us", "m1", 30))
    b = get_espeak().synthesize("Same words here.", Voice("en-us", "f3", 80))
    assert len(a.samples) != len(b.samples) or not np.array_equal(a.samples, b.samples)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="empty text"):
        get_espeak().synthesize("   ", Voice())
    with pytest.raises(EspeakError, match="no voice"):
        get_espeak().synthesize("hello", Voice("xx-nowhere"))


def test_recorded_phonemes_replay_what_espeak_answered_and_refuse_the_rest(tmp_path):
    """A machine without espeak-ng (the GPU machines) speaks texts recorded where espeak runs."""
    from streamchar.data.espeak import EspeakError
    from streamchar.data.phonemizer import RecordedPhonemizer

    class Espeak:  # stands in for espeak-ng: the recorder only stores and replays its answers
        calls = 0

        def words(self, text, language="en-us"):
            Espeak.calls += 1
            return [[f"{w}0"] for w in text.split()]

    table = tmp_path / "phonemes.json"
    recorder = RecordedPhonemizer(table, Espeak())
    assert recorder.words("hello there") == [["hello0"], ["there0"]]
    assert recorder.words("hello there") == [["hello0"], ["there0"]] and Espeak.calls == 1
    replay = RecordedPhonemizer(table)
    assert replay.words("hello there") == [["hello0"], ["there0"]]
    with pytest.raises(EspeakError, match="not among the phonemes recorded"):
        replay.words("something new")
    with pytest.raises(EspeakError, match="No recorded phonemes"):
        RecordedPhonemizer(tmp_path / "missing.json")
