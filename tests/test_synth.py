"""The synthetic corpus: determinism, splits, resumption and timing truth."""

import hashlib
import json

import numpy as np
import pytest

from streamchar.config import load_config
from streamchar.data.sentences import SentenceGenerator, is_heldout, number_words, vocabulary_size
from streamchar.data.shards import Corpus, CorpusError, ShardReader
from streamchar.data.synth import character_splits, plan_jobs, synth_corpus
from streamchar.data.verify import timing_truth
from tests.conftest import TINY_CORPUS_OVERRIDES


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.tar"))}


def test_same_seed_same_bytes_other_seed_differs(tiny_corpus, tmp_path):
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + ["data.synth.workers=2"])
    synth_corpus(cfg, tmp_path / "again", progress=False)
    assert _digests(tmp_path / "again") == _digests(tiny_corpus)  # also across worker counts
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + ["data.synth.seed=7", "data.synth.num_characters=2"])
    synth_corpus(cfg, tmp_path / "other", progress=False)
    other = _digests(tmp_path / "other")
    assert other["shard-00000.tar"] != _digests(tiny_corpus)["shard-00000.tar"]


def test_resume_rebuilds_only_missing_shards(tiny_corpus, tmp_path, tiny_config):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_corpus, copy)
    (copy / "shard-00001.tar").unlink()
    (copy / "shard-00001.json").unlink()
    kept = (copy / "shard-00000.tar").stat().st_mtime_ns
    summary = synth_corpus(tiny_config, copy, progress=False)
    assert _digests(copy) == _digests(tiny_corpus)
    assert (copy / "shard-00000.tar").stat().st_mtime_ns == kept
    assert summary["clips"] == len(Corpus(tiny_corpus).clips)


def test_other_settings_in_same_folder_are_refused(tiny_corpus):
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + ["data.synth.max_words=9"])
    with pytest.raises(ValueError, match="other settings"):
        synth_corpus(cfg, tiny_corpus, progress=False)


def test_splits_hold_out_identities_and_sentences(tiny_corpus):
    corpus = Corpus(tiny_corpus)
    train_chars = {c["char_id"] for c in corpus.entries("train")}
    test_chars = {c["char_id"] for c in corpus.entries("test")}
    assert train_chars and test_chars and not train_chars & test_chars
    frac = corpus.manifest["synth"]["heldout_sentence_fraction"]
    for entry in corpus.entries():
        meta = corpus.reader(entry["shard"]).meta(entry["key"])
        for turn in meta["turns"]:
            if turn["speaker"] == "self":
                assert is_heldout(turn["text"], frac) == (meta["split"] == "test")


def test_plan_is_balanced():
    cfg = load_config(None, ["data.synth.num_characters=30", "data.synth.clips_per_character=10"]).data.synth
    jobs = plan_jobs(cfg)
    kinds = {k: sum(j.kind == k for j in jobs) / len(jobs) for k in ("monologue", "dialogue", "listening")}
    assert 0.1 < kinds["dialogue"] < 0.3 and kinds["listening"] < 0.12
    splits = character_splits(cfg)
    assert sum(s == "test" for s in splits.values()) == 3
    for job in jobs:
        if job.kind == "dialogue":
            assert splits[job.partner_id] == job.split and job.partner_id != job.char_id


def test_clip_contents(tiny_corpus):
    corpus = Corpus(tiny_corpus)
    kinds = {e["kind"] for e in corpus.entries()}
    assert {"monologue", "dialogue"} <= kinds
    for entry in corpus.entries():
        clip = corpus.clip(entry)
        n = clip.meta["num_frames"]
        assert clip.frames.shape == (n, 64, 64, 3)
        assert len(clip.audio) == n * 640 and clip.sample_rate == 16000
        assert clip.ground_truth["mouth_open"].shape == (n,)
        if entry["kind"] == "dialogue":
            assert clip.meta["listening_spans"] and clip.meta["partner_char_id"] is not None
        if entry["kind"] == "listening":
            assert np.abs(clip.audio).max() == 0 and not clip.meta["words"]


def test_timing_truth(tiny_corpus):
    result = timing_truth(Corpus(tiny_corpus))
    assert result["mouth_energy_pearson_r"] >= 0.5
    assert result["mouth_energy_best_lag_frames"] == 0
    assert result["outside_phonemes_active_fraction"] < 0.01  # silence where there is no phoneme
    assert result["inside_phonemes_active_fraction"] > 0.8


def test_sentences():
    gen = SentenceGenerator(np.random.default_rng(0))
    train = [gen.sentence("train") for _ in range(50)]
    test = [gen.sentence("test") for _ in range(10)]
    assert not set(train) & set(test)
    assert all(4 <= len(s.split()) <= 14 and not any(ch.isdigit() for ch in s) for s in train)
    assert vocabulary_size() > 2000
    assert number_words(1234) == "one thousand two hundred and thirty four"


def test_damaged_shard_and_missing_corpus(tmp_path):
    bad = tmp_path / "shard-00000.tar"
    bad.write_bytes(b"not a tar" * 100)
    with pytest.raises(CorpusError, match="damaged"):
        ShardReader(bad)
    with pytest.raises(CorpusError, match="no corpus.json"):
        Corpus(tmp_path)
    (tmp_path / "corpus.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CorpusError, match="format version"):
        Corpus(tmp_path)
