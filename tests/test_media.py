"""mp4 writing: audio and video line up to the sample after an AAC round trip."""

import shutil
import subprocess

import numpy as np
import pytest

from streamchar.media import MediaError, Mp4Writer, read_video, resample, write_mp4


def _click_video(fps=25, frames=75, click_frame=40, rate=16000):
    video = np.zeros((frames, 32, 32, 3), np.uint8)
    video[click_frame:] = 255
    audio = np.zeros(frames * rate // fps, np.float32)
    start = click_frame * rate // fps
    audio[start : start + 80] = 0.8
    return video, audio


def _onset(samples, threshold=0.3):
    return int(np.argmax(np.abs(samples) > threshold))


def test_audio_is_aligned_with_video_after_decoding(tmp_path):
    video, audio = _click_video()
    path = write_mp4(tmp_path / "click.mp4", video, 25, audio, 16000)
    frames, fps, decoded, rate = read_video(path, audio_rate=48000)
    assert rate == 48000 and fps == 25
    assert int(np.argmax(frames.mean(axis=(1, 2, 3)) > 128)) == 40
    expected = 40 / 25 * 48000
    # AAC primes 1024 samples; with pts the edit list removes them, so the click lands on time
    assert abs(_onset(decoded) - expected) <= 4


def test_chunked_writes_equal_one_write(tmp_path):
    video, audio = _click_video()
    write_mp4(tmp_path / "whole.mp4", video, 25, audio, 16000)
    with Mp4Writer(tmp_path / "chunks.mp4", 25, 16000) as writer:
        for k in range(0, len(video), 12):
            writer.write_frames(video[k : k + 12])
            writer.write_audio(audio[k * 640 : (k + 12) * 640])
    _, _, a, _ = read_video(tmp_path / "whole.mp4", 48000)
    _, _, b, _ = read_video(tmp_path / "chunks.mp4", 48000)
    assert abs(_onset(a) - _onset(b)) <= 1


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_ffprobe_sees_h264_and_aac_of_equal_duration(tmp_path):
    video, audio = _click_video(frames=113)
    path = write_mp4(tmp_path / "v.mp4", video, 25, audio, 16000)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    streams = dict(line.split(",") for line in out)
    assert set(streams) == {"h264", "aac"}
    assert abs(float(streams["h264"]) - float(streams["aac"])) < 1024 / 48000


def test_upsampled_audio_has_no_images_above_source_band(tmp_path):
    t = np.arange(16000 * 2) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_mp4(tmp_path / "tone.mp4", np.zeros((50, 32, 32, 3), np.uint8), 25, audio, 16000)
    _, _, decoded, rate = read_video(path, 48000)
    spectrum = np.abs(np.fft.rfft(decoded[4800:-4800])) ** 2
    freqs = np.fft.rfftfreq(len(decoded[4800:-4800]), 1 / rate)
    assert spectrum[freqs > 8500].sum() / spectrum.sum() < 1e-4


def test_bad_frames_are_refused(tmp_path):
    with pytest.raises(MediaError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 32, 32, 3), np.float32), 25)
    with pytest.raises(MediaError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 33, 32, 3), np.uint8), 25)
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(MediaError):
        read_video(tmp_path / "missing.mp4")


def test_resample_preserves_a_tone():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 300 * t).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert len(out) == 16000
    ref = np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert np.abs(out[200:-200] - ref[200:-200]).max() < 1e-2


def test_contact_sheet_lays_frames_out_in_a_grid():
    from streamchar.media import contact_sheet

    frames = [np.full((8, 6, 3), 40 * i, np.uint8) for i in range(5)]
    assert np.array_equal(contact_sheet(frames), np.concatenate(frames, axis=1))  # one row, no captions
    sheet = contact_sheet(frames, columns=2, captions=[f"{i}" for i in range(5)])
    assert sheet.shape == (3 * (8 + 14), 2 * 6, 3)
    assert np.array_equal(sheet[2 * 22 + 14 :, :6], frames[4]) and (sheet[2 * 22 :, 6:] == (20, 20, 24)).all()
