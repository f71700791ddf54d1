"""Real-clip ingestion, tested on mp4 files exported from the synthetic corpus."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from streamchar.config import load_config
from streamchar.data.prepare import LEDGER, export_videos, prepare_corpus, resample_frames
from streamchar.data.shards import Corpus
from streamchar.data.verify import best_lag
from tests.conftest import TINY_CORPUS_OVERRIDES


@pytest.fixture(scope="module")
def exported(tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    export_videos(tiny_corpus, folder, max_clips=4)
    return folder


def test_round_trip_through_video_files(tiny_corpus, exported, tmp_path):
    cfg = load_config(None, TINY_CORPUS_OVERRIDES)
    summary = prepare_corpus(cfg, exported, tmp_path / "prepared", progress=False)
    assert summary["ingested_now"] == 4 and summary["skipped_total"] == 0
    original = {e["key"]: e for e in Corpus(tiny_corpus).entries()}
    prepared = Corpus(tmp_path / "prepared")
    for entry in prepared.entries():
        clip = prepared.clip(entry)
        source = original[clip.meta["source"].rsplit("/", 1)[-1].removesuffix(".mp4")]
        ref = Corpus(tiny_corpus).clip(source)
        assert clip.frames.shape == ref.frames.shape
        mse = ((clip.frames.astype(float) - ref.frames) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 28  # only the export's H.264 stands between them
        assert best_lag(ref.audio, clip.audio[: len(ref.audio)], 20) == 0
        assert clip.meta["phonemes"] == [list(p) for p in ref.meta["phonemes"]]
        assert clip.meta["split"] == ref.meta["split"]
        assert clip.meta["char_id"].endswith(f"char{ref.meta['char_id']}")


def test_bad_clips_are_skipped_counted_and_resumed(exported, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(exported, source)
    speaker = next(p for p in (source / "train").iterdir() if p.is_dir())
    exported_videos = sorted(speaker.glob("*.mp4"))
    exported_videos[0].with_suffix(".txt").unlink()
    (speaker / "corrupt.mp4").write_bytes(b"\x00not a video" * 50)
    (speaker / "corrupt.txt").write_text("words")
    if shutil.which("ffmpeg"):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", "1",
                        str(speaker / "silent.mp4")], check=True)  # fmt: skip
        (speaker / "silent.txt").write_text("no sound here")
    (speaker / "badgrid.mp4").write_bytes(exported_videos[-1].read_bytes())
    (speaker / "badgrid.txt").write_text("words")
    (speaker / "badgrid.TextGrid").write_text("this is not a textgrid")

    cfg = load_config(None, TINY_CORPUS_OVERRIDES + ["data.prepare.clips_per_shard=2"])
    summary = prepare_corpus(cfg, source, tmp_path / "out", progress=False)
    reasons = summary["skip_reasons"]
    assert reasons["unreadable video"] == 1
    assert reasons["no transcript (.txt beside the video)"] == 1
    assert reasons["unreadable TextGrid"] == 1
    if shutil.which("ffmpeg"):
        assert reasons["no audio stream"] == 1
    usable = len(list(source.rglob("*.mp4"))) - sum(reasons.values())
    assert summary["clips_in_corpus"] == summary["ingested_now"] == usable == 3
    again = prepare_corpus(cfg, source, tmp_path / "out", progress=False)
    assert again["ingested_now"] == 0 and again["already_done"] == summary["videos_found"]
    assert again["clips_in_corpus"] == 3
    lines = [json.loads(line) for line in (tmp_path / "out" / LEDGER).read_text().splitlines()]
    assert sum(line["status"] == "ok" for line in lines) == 3


def test_frame_rate_conversion_by_presentation_time():
    frames = np.arange(10)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    times = np.arange(10) / 30.0  # 30 fps source
    out = resample_frames(frames, times, fps=25, duration=10 / 30)
    assert [int(f[0, 0, 0]) for f in out] == [0, 1, 2, 3, 4, 6, 7, 8]


def test_interrupted_run_resumes_without_redoing(exported, tmp_path, monkeypatch):
    import streamchar.data.prepare as prepare

    cfg = load_config(None, TINY_CORPUS_OVERRIDES + ["data.prepare.clips_per_shard=2"])
    real = prepare.ingest_clip
    calls = []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the third clip
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare, "ingest_clip", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(cfg, exported, tmp_path / "out", progress=False)
    assert len(list((tmp_path / "out").glob("shard-*.tar"))) == 1  # the full shard was kept
    monkeypatch.setattr(prepare, "ingest_clip", real)
    summary = prepare_corpus(cfg, exported, tmp_path / "out", progress=False)
    assert summary["already_done"] == 2 and summary["ingested_now"] == 2
    assert summary["clips_in_corpus"] == 4
