import numpy as np
import pytest

from streamchar.data.characters import STYLES, CharacterRenderer, FaceState, Identity, sample_identity
from streamchar.data.motion import articulation_tracks, motion_tracks, viseme_segments
from streamchar.data.phonemes import VISEME_TO_ID


def test_identities_are_deterministic_and_distinct():
    a, b = sample_identity(0, 3), sample_identity(0, 3)
    assert a == b
    assert sample_identity(0, 4) != a and sample_identity(1, 3) != a
    assert {sample_identity(0, i).style for i in range(6)} == set(STYLES)
    assert Identity.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("char_id", [0, 1, 2])
def test_render_is_deterministic_and_mouth_moves(char_id):
    renderer = CharacterRenderer(sample_identity(0, char_id), 64)
    closed = renderer.render(FaceState(open=0.0))
    assert closed.shape == (64, 64, 3) and closed.dtype == np.uint8
    assert np.array_equal(closed, renderer.render(FaceState(open=0.0)))
    opened = renderer.render(FaceState(open=0.9, teeth=0.5))
    changed = np.abs(opened.astype(int) - closed.astype(int)).sum(axis=2) > 30
    rows = np.nonzero(changed.any(axis=1))[0]
    assert changed.sum() > 20
    assert rows.min() > 64 * 0.4  # the change is in the lower face, where the mouth is
    blink = renderer.render(FaceState(blink=1.0))
    assert not np.array_equal(blink, closed)


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="even"):
        CharacterRenderer(sample_identity(0, 0), 63)


def test_segments_tile_the_clip_and_split_diphthongs():
    segs = viseme_segments([("h", 0.1, 0.2), ("aI", 0.2, 0.4)], duration=0.6)
    assert segs[0][:3] == ("sil", 0.0, 0.1) and segs[-1][0] == "sil"
    assert [s[0] for s in segs[1:4]] == ["kk", "aa", "ih"]
    assert all(a[2] == pytest.approx(b[1]) for a, b in zip(segs, segs[1:], strict=False))


def test_bilabials_close_the_lips_and_vowels_open_them():
    # "ma ma ma": bilabial closures between open vowels
    phonemes = []
    t = 0.2
    for _ in range(3):
        phonemes += [("m", t, t + 0.12), ("aa", t + 0.12, t + 0.32)]
        t += 0.32
    tracks, visemes = articulation_tracks(phonemes, num_frames=40, fps=25)
    fps = 25
    for k in range(3):
        m_centre = int((0.2 + k * 0.32 + 0.06) * fps)
        a_centre = int((0.2 + k * 0.32 + 0.22) * fps)
        assert tracks["open"][m_centre] < 0.12
        assert tracks["open"][a_centre] > 0.6
        assert visemes[a_centre] == VISEME_TO_ID["aa"]
    assert tracks["open"][0] < 0.05  # silence before speech


def test_motion_tracks_ground_truth():
    ident = sample_identity(0, 1)
    rng = np.random.default_rng(0)
    phonemes = [("h", 0.5, 0.6), ("aa", 0.6, 0.9)]
    tracks = motion_tracks(rng, ident, 50, 25, phonemes, [("ha", 0.5, 0.9)], [(0.5, 0.9)], [(1.2, 1.8)], 1.0)
    gt = tracks.ground_truth()
    assert set(gt) >= {"viseme", "mouth_open", "speaking", "head_pose", "blink"}
    assert gt["head_pose"].shape == (50, 3)
    assert gt["speaking"][15] == 1 and gt["speaking"][40] == 0
    assert 0 <= gt["blink"].min() and gt["blink"].max() <= 1
    state = tracks.state(16)
    assert state.open == pytest.approx(gt["mouth_open"][16])


def test_mouth_box_holds_every_pixel_the_mouth_changes():
    """Render the widest open mouth and the closed one at random head poses: the pixels that differ all lie in
    the renderer's mouth box (what the training loss weights)."""
    rng = np.random.default_rng(0)
    for char_id in range(6):
        renderer = CharacterRenderer(sample_identity(0, char_id), 128)
        for _ in range(3):
            pose = dict(yaw=rng.uniform(-20, 20), pitch=rng.uniform(-12, 12), roll=rng.uniform(-8, 8),
                        shift_x=rng.uniform(-0.04, 0.04), shift_y=rng.uniform(-0.03, 0.03))  # fmt: skip
            closed = renderer.render(FaceState(open=0.0, width=0.0, smile=-0.3, **pose)).astype(int)
            wide = renderer.render(
                FaceState(open=1.2, width=1.0, teeth=1.0, tongue=1.0, smile=1.0, **pose)
            ).astype(int)
            ys, xs = np.nonzero(np.abs(closed - wide).sum(-1) > 20)
            x0, y0, x1, y1 = (v * 128 for v in renderer.mouth_box(FaceState(**pose)))
            assert len(xs) > 50
            assert ((xs >= x0 - 1) & (xs <= x1 + 1) & (ys >= y0 - 1) & (ys <= y1 + 1)).all()
            assert (x1 - x0) * (y1 - y0) < 0.15 * 128 * 128  # a box around the mouth, not the face
