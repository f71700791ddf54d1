"""streamchar train vae on the tiny corpus: it learns, resumes exactly, and writes a codec."""

import json

import pytest
import torch

from streamchar.checkpoints import CheckpointError
from streamchar.codecs.video import load_video_codec
from streamchar.config import load_config
from streamchar.training.vae import train_vae
from tests.conftest import TINY_CORPUS_OVERRIDES

OVERRIDES = TINY_CORPUS_OVERRIDES + [
    "video_codec.arch.encoder_block_out_channels=[8,8,8,8]",
    "video_codec.arch.decoder_block_out_channels=[8,8,8,8]",
    "train.vae.steps=24", "train.vae.batch_size=4", "train.vae.crop_size=32", "train.vae.lr=3e-3",
    "train.vae.warmup_steps=2", "train.vae.log_every=4", "train.vae.eval_every=12", "train.vae.ckpt_every=6",
    "train.vae.eval_frames=16", "train.vae.frames_per_clip=4", "train.vae.mixed_precision=no",
]  # fmt: skip


def test_train_resume_and_codec(tiny_corpus, tmp_path):
    cfg = load_config(None, OVERRIDES)
    whole = train_vae(cfg, tiny_corpus, tmp_path / "whole")
    assert whole["finished"] and whole["step"] == 24

    first = train_vae(cfg, tiny_corpus, tmp_path / "split", max_steps=12)
    assert not first["finished"] and first["step"] == 12
    second = train_vae(cfg, tiny_corpus, tmp_path / "split")
    assert second["finished"]
    # resuming from step 12 reproduces the uninterrupted run exactly
    a = load_video_codec(tmp_path / "whole" / "codec")
    b = load_video_codec(tmp_path / "split" / "codec")
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert second["heldout_psnr_db"] == pytest.approx(whole["heldout_psnr_db"])

    # it learned something, and the written codec carries its latent statistics
    untrained = train_vae(load_config(None, OVERRIDES + ["train.vae.steps=1"]), tiny_corpus, tmp_path / "one")
    assert whole["heldout_psnr_db"] > untrained["heldout_psnr_db"] + 1.0
    meta = json.loads((tmp_path / "whole" / "codec" / "streamchar_codec.json").read_text())
    assert meta["latent_std"] == pytest.approx(whole["latent_std"], abs=1e-3)
    latents = a.encode(torch.zeros(3, 64, 64, 3, dtype=torch.uint8).numpy())
    assert latents.shape == (4, 3, 8, 8)


def test_changed_codec_config_is_refused(tiny_corpus, tmp_path):
    cfg = load_config(None, OVERRIDES + ["train.vae.steps=1"])
    train_vae(cfg, tiny_corpus, tmp_path / "run")
    cfg = load_config(None, OVERRIDES + ["train.vae.steps=1", "video_codec.latent_channels=8"])
    with pytest.raises(CheckpointError, match="latent_channels changed"):
        train_vae(cfg, tiny_corpus, tmp_path / "run")
