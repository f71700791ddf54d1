"""Shared fixtures: a tiny synthetic corpus built once per session, and the GPU marker."""

from __future__ import annotations

import pytest
import torch

from streamchar.config import load_config

TINY_CORPUS_OVERRIDES = [
    "video_codec.image_size=64",
    "video_codec.latent_channels=4",
    "video_codec.path=null",
    "data.synth.num_characters=4",
    "data.synth.clips_per_character=2",
    "data.synth.dialogue_fraction=0.3",
    "data.synth.listening_fraction=0.15",
    "data.synth.heldout_identity_fraction=0.25",
    "data.synth.clips_per_shard=3",
    "data.synth.max_sentences=1",
    "data.synth.max_words=8",
    "data.synth.workers=1",
    # trainer tests build denoisers from this config: the plain formulation (no priors to load); the residual
    # one has its own tests over priors trained on this cache (the trained_priors fixture)
    "denoiser.formulation=plain",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config():
    return load_config(None, TINY_CORPUS_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, tiny_config):
    from streamchar.data.synth import synth_corpus

    out = tmp_path_factory.mktemp("corpus")
    synth_corpus(tiny_config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def cache(tiny_corpus, tmp_path_factory):
    """A latent cache of the tiny corpus, encoded with a random 8-channel-wide tiny codec."""
    from streamchar.codecs.video import build_video_codec
    from streamchar.data.latents import encode_corpus
    from streamchar.data.shards import Corpus

    root = tmp_path_factory.mktemp("cache")
    torch.manual_seed(0)
    codec = build_video_codec(
        "tiny", 64, 4, {"encoder_block_out_channels": [8] * 4, "decoder_block_out_channels": [8] * 4}
    )
    codec.save(root / "codec")
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + [f"video_codec.path={root / 'codec'}"])
    summary = encode_corpus(cfg, tiny_corpus, root / "latents", progress=False)
    assert summary["clips"] == len(Corpus(tiny_corpus).clips)
    return root / "latents"


@pytest.fixture(scope="session")
def trained_priors(cache, tmp_path_factory):
    """Tiny acoustic and video priors trained a few steps on the cache: ``(overrides, root)``; the overrides
    select the residual formulation with them."""
    from streamchar.config import load_config
    from streamchar.training.prior import train_prior

    root = tmp_path_factory.mktemp("priors")
    overrides = [
        "prior.audio.width=32", "prior.audio.speaker_dim=8", "prior.audio.dilations=[1,2]",
        "prior.video.channels=[8,8,16]", "prior.video.audio_width=16",
        "train.prior_audio.steps=3", "train.prior_audio.batch_size=4", "train.prior_audio.eval_windows=4",
        "train.prior_video.steps=3", "train.prior_video.batch_size=2", "train.prior_video.eval_windows=4",
        "train.prior_audio.mixed_precision=no", "train.prior_video.mixed_precision=no",
        "train.prior_audio.phoneme_probe_steps=5",
        f"prior.audio_path={root / 'audio'}", f"prior.video_path={root / 'video'}",
    ]  # fmt: skip
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + overrides)
    train_prior(cfg, "audio", cache, root / "audio", progress=False)
    train_prior(cfg, "video", cache, root / "video", progress=False)
    residual = [
        "denoiser.formulation=residual",
        "denoiser.residual_scale_video=0.5",
        "denoiser.residual_scale_audio=0.5",
    ]
    return overrides + residual, root
