import pytest

from streamchar.timeline import Timeline


def test_tiny_rates():
    tl = Timeline()
    assert tl.samples_per_video_frame == 640
    assert tl.samples_per_audio_token == 640
    assert tl.audio_tokens_per_latent_frame == 1
    assert tl.chunk_seconds == pytest.approx(0.48)
    assert tl.chunk_audio_tokens == 12
    assert tl.reference_voice_tokens == 75


def test_seconds_frames_samples_round_trip():
    tl = Timeline()
    for frames in (0, 1, 7, 250):
        assert tl.seconds_to_video_frames(tl.video_frames_to_seconds(frames)) == frames
        assert tl.samples_to_video_frames(tl.video_frames_to_samples(frames)) == frames
    assert tl.seconds_to_samples(1.5) == 24000
    assert tl.samples_to_video_frames(639) == 0 and tl.samples_to_video_frames(640) == 1
    # frame k is on screen over [k/fps, (k+1)/fps)
    assert tl.video_frame_of_time(0.0399) == 0 and tl.video_frame_of_time(0.04) == 1


def test_causal_codec_latent_frames():
    tl = Timeline(temporal_factor=4, causal_first_frame=True, chunk_latent_frames=5)
    assert [tl.video_frames_to_latent_frames(n) for n in (1, 4, 5, 8, 9, 21)] == [1, 1, 2, 2, 3, 6]
    assert [tl.latent_frames_to_video_frames(n) for n in (1, 2, 3, 6)] == [1, 5, 9, 21]
    assert tl.valid_video_frames(23) == 21
    assert tl.latent_frame_span(0) == (0, 1) and tl.latent_frame_span(1) == (1, 5)
    # the causal first chunk is shorter; later chunks are chunk_latent_frames * temporal_factor
    assert tl.chunk_video_frames(0) == 17 and tl.chunk_video_frames(1) == 20
    assert tl.audio_tokens_per_latent_frame == 4
    assert tl.latent_frames_to_audio_tokens(2) == 5  # 5 video frames of audio


def test_per_frame_codec_latent_frames():
    tl = Timeline(temporal_factor=2)
    assert tl.video_frames_to_latent_frames(7) == 3
    assert tl.latent_frames_to_video_frames(3) == 6
    assert tl.chunk_video_frames(0) == tl.chunk_video_frames(3) == 24


@pytest.mark.parametrize(
    "kwargs",
    [dict(fps=0), dict(sample_rate=16001), dict(audio_latent_rate=7), dict(fps=25, audio_latent_rate=10),
     dict(motion_latent_frames=-1)],
)  # fmt: skip
def test_invalid_timelines_are_refused(kwargs):
    with pytest.raises(ValueError):
        Timeline(**kwargs)
