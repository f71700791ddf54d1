import numpy as np

from streamchar.data.phonemes import (
    PHONEMES,
    SILENCE_ID,
    VISEME_TARGETS,
    VISEMES,
    F0Buckets,
    arpabet_to_espeak,
    canonical_phoneme,
    frame_phoneme_ids,
    frame_units,
    num_units,
    phoneme_id,
    phoneme_visemes,
)


def test_every_phoneme_has_visemes_with_targets():
    for p in PHONEMES[1:]:
        visemes = phoneme_visemes(p)
        assert 1 <= len(visemes) <= 2
        assert all(v in VISEME_TARGETS for v in visemes)
    assert set(VISEME_TARGETS) == set(VISEMES)
    assert VISEME_TARGETS["PP"].open == 0.0 and VISEME_TARGETS["aa"].open > VISEME_TARGETS["ih"].open


def test_canonical_mapping():
    assert canonical_phoneme("_:") == canonical_phoneme("_") == "<sil>"
    assert canonical_phoneme("oU") == "oU"
    assert canonical_phoneme("t3") == "t"  # unknown modifier dropped
    assert phoneme_id("_") == SILENCE_ID


def test_arpabet():
    assert arpabet_to_espeak("AH0") == "@" and arpabet_to_espeak("AH1") == "V"
    assert arpabet_to_espeak("IY2") == "i:" and arpabet_to_espeak("sp") == "<sil>"
    assert arpabet_to_espeak("DH") == "D"


def test_frame_ids_use_frame_centres():
    ids = frame_phoneme_ids([("h", 0.0, 0.05), ("aa", 0.05, 0.2)], num_frames=6, frame_rate=25)
    # centres 0.02, 0.06, 0.10, 0.14, 0.18, 0.22
    assert list(ids) == [phoneme_id("h")] + [phoneme_id("aa")] * 4 + [SILENCE_ID]


def test_units_and_f0_buckets():
    buckets = F0Buckets(num_buckets=8, f_min=70, f_max=400)
    b = buckets.bucket(np.array([0.0, 70.0, 100.0, 399.0, 1000.0]))
    assert b[0] == 0 and b[1] == 1 and b[-1] == 8 and b[-2] == 8 and 1 < b[2] < 8
    ids = np.array([SILENCE_ID, 5, 5])
    units = frame_units(ids, np.array([3, 0, 4]), buckets)
    assert list(units) == [0, 5 * 9 + 0, 5 * 9 + 4]  # silence carries no pitch bucket
    assert num_units(buckets) == len(PHONEMES) * 9
