"""The latent cache and its training windows."""

import numpy as np
import pytest
import torch

from streamchar.config import load_config
from streamchar.data.latents import LatentCache, encode_corpus, estimate_f0
from streamchar.data.shards import Corpus, CorpusError
from streamchar.data.windows import UnitWindowDataset, WindowDataset
from streamchar.timeline import Timeline
from tests.conftest import TINY_CORPUS_OVERRIDES


def test_cache_contents(tiny_corpus, cache):
    lc = LatentCache(cache)
    corpus = Corpus(tiny_corpus)
    for entry in lc.entries():
        video, audio = lc.tensor(entry, "video"), lc.tensor(entry, "audio")
        assert video.dtype == torch.float16 and video.shape[0] == 4 and video.shape[2:] == (8, 8)
        assert video.shape[1] == entry["num_frames"] == audio.shape[0]
        units, speaking = lc.tensor(entry, "units"), lc.tensor(entry, "speaking")
        assert units.shape == speaking.shape == (audio.shape[0],)
        clip = corpus.reader(entry["shard"]).meta(entry["key"])
        if entry["kind"] == "listening":
            assert speaking.sum() == 0 and (lc.tensor(entry, "phoneme_ids") == 0).all()
        else:
            assert speaking.sum() > 0 and (lc.tensor(entry, "f0") > 0).any()
        assert lc.meta(entry)["transcript"] == clip["transcript"]


def test_resume_and_mismatch(tiny_corpus, cache, tmp_path):
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + [f"video_codec.path={cache.parent / 'codec'}"])
    again = encode_corpus(cfg, tiny_corpus, cache, progress=False)
    assert again["encoded_now"] == 0
    cfg_bad = load_config(
        None,
        TINY_CORPUS_OVERRIDES + [f"video_codec.path={cache.parent / 'codec'}", "data.encode.dtype=float32"],
    )
    with pytest.raises(CorpusError, match="other codecs or settings"):
        encode_corpus(cfg_bad, tiny_corpus, cache, progress=False)
    with pytest.raises(Exception, match="video_codec.path"):
        encode_corpus(load_config(None, TINY_CORPUS_OVERRIDES), tiny_corpus, tmp_path, progress=False)


def test_windows_follow_the_layout(cache):
    lc = LatentCache(cache)
    tl = lc.timeline
    ds = WindowDataset(lc, "train", length=40, seed=0, first_chunk_prob=0.3)
    seen_first = seen_stream = False
    for i in range(len(ds)):
        item = ds[i]
        entry = next(e for e in lc.entries() if e["key"] == item["key"])
        L, M, S = tl.chunk_latent_frames, tl.motion_latent_frames, tl.sink_latent_frames
        assert item["video"].shape == (4, L, 8, 8) and item["audio"].shape == (L, 320)
        assert item["ref_image"].shape == (4, 1, 8, 8) and item["ref_voice"].shape == (
            tl.reference_voice_tokens,
            320,
        )
        s = item["start"]
        assert torch.equal(item["video"], lc.tensor(entry, "video")[:, s : s + L].float())
        if item["has_sink"]:
            seen_stream = True
            assert s >= S
            assert torch.equal(item["sink_video"], lc.tensor(entry, "video")[:, :S].float())
            assert torch.equal(item["motion_video"], lc.tensor(entry, "video")[:, s - M : s].float())
            assert torch.equal(item["motion_audio"], lc.tensor(entry, "audio")[s - M : s].float())
        else:
            seen_first = True
            assert s == 0 and item["sink_video"].abs().sum() == 0
        assert torch.equal(item["units"], lc.tensor(entry, "units")[s : s + L].long())
        assert not torch.isnan(item["mouth_open"]).any()
    assert seen_first and seen_stream
    # deterministic per index
    assert torch.equal(ds[3]["video"], ds[3]["video"]) and ds[3]["key"] == ds[3]["key"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["video"].shape == (4, 4, tl.chunk_latent_frames, 8, 8)


def test_f0_of_a_tone():
    tl = Timeline()
    t = np.arange(16000) / 16000
    f0 = estimate_f0((0.5 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), tl, 25)
    assert np.median(f0[2:-2]) == pytest.approx(150, rel=0.02)


def test_a_shard_subset_first_then_the_rest_in_bf16(tiny_corpus, cache, tmp_path):
    codec_override = f"video_codec.path={cache.parent / 'codec'}"
    shards = sorted({c["shard"] for c in Corpus(tiny_corpus).clips})
    assert len(shards) > 1
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + [codec_override, "data.encode.max_shards=1"])
    first = encode_corpus(cfg, tiny_corpus, tmp_path, progress=False)
    # video for the first shard; audio (and conditions) for every shard, which the acoustic prior reads
    subset = LatentCache(tmp_path)
    assert first["shards"] == len(shards) and {e["shard"] for e in subset.entries()} == {shards[0]}
    audio_only = [e for e in subset.entries(audio_only=True) if e["shard"] != shards[0]]
    assert audio_only and all(not e["video"] and not subset.has(e, "video") for e in audio_only)
    assert all(
        subset.has(e, "units") and subset.tensor(e, "audio").shape[0] == e["audio_tokens"] for e in audio_only
    )
    assert len(UnitWindowDataset(subset, "train", 4).entries) > len(WindowDataset(subset, "train").entries)
    full = encode_corpus(
        load_config(None, TINY_CORPUS_OVERRIDES + [codec_override]), tiny_corpus, tmp_path, progress=False
    )  # the audio-only shards are encoded again, with their video
    assert full["encoded_now"] == len(shards) - 1 and full["clips"] == len(LatentCache(cache).entries())
    assert len(LatentCache(tmp_path).entries()) == full["clips"]
    # bf16 autocast of the video encoder stays close to float32 and leaves the audio untouched
    bf16 = load_config(None, TINY_CORPUS_OVERRIDES + [codec_override, "data.encode.mixed_precision=bf16"])
    encode_corpus(bf16, tiny_corpus, tmp_path / "bf16", progress=False)
    ref, low = LatentCache(cache), LatentCache(tmp_path / "bf16")
    entry = ref.entries()[0]
    assert torch.equal(ref.tensor(entry, "audio"), low.tensor(entry, "audio"))
    video, video_bf16 = ref.tensor(entry, "video").float(), low.tensor(entry, "video").float()
    assert not torch.equal(video, video_bf16)
    assert (video - video_bf16).abs().mean() < 0.05 * video.std()
