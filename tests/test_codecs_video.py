"""Video codecs over diffusers, on tiny random configs."""

import numpy as np
import pytest
import torch

from streamchar.codecs.base import CodecError, VideoCodec
from streamchar.codecs.video import build_video_codec, load_video_codec

TINY = {"encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8]}
KL = {"block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D"] * 2,
      "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4, "layers_per_block": 1}  # fmt: skip
WAN = {
    "base_dim": 8,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


def _frames(n=9, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "kind, arch, latent_shape",
    [("tiny", TINY, (4, 9, 4, 4)), ("kl", KL, (4, 9, 16, 16)), ("wan", WAN, (4, 3, 4, 4))],
)
def test_shapes_and_protocol(kind, arch, latent_shape):
    torch.manual_seed(0)
    codec = build_video_codec(kind, 32, 4, arch)
    assert isinstance(codec, VideoCodec)
    latents = codec.encode(_frames())
    assert tuple(latents.shape) == latent_shape
    frames = codec.decode(latents)
    expected = 9 if kind != "wan" else 1 + (latent_shape[1] - 1) * 4
    assert frames.shape == (expected, 32, 32, 3) and frames.dtype == torch.uint8


def test_per_frame_codec_matches_diffusers_directly():
    torch.manual_seed(0)
    codec = build_video_codec("tiny", 32, 4, TINY)
    frames = _frames(3)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        raw = codec.model.encode(x).latents
    assert torch.allclose(codec.encode(frames).permute(1, 0, 2, 3), raw, atol=1e-5)


def test_normalisation_round_trip():
    codec = build_video_codec("tiny", 32, 4, TINY)
    codec.set_normalisation(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 1.0, 3.0]))
    z = torch.randn(4, 5, 4, 4)
    assert torch.allclose(codec.normalise(codec.denormalise(z, 0), 0), z, atol=1e-6)


def test_wan_streaming_decode_equals_whole_decode():
    torch.manual_seed(0)
    codec = build_video_codec("wan", 32, 4, WAN)
    latents = codec.encode(_frames(13))  # 1 + 3 * 4 frames -> 4 latent frames
    assert latents.shape[1] == 4
    whole = codec.decode(latents)
    stream = codec.decoder_stream()
    parts = [stream.decode(latents[:, :1]), stream.decode(latents[:, 1:3]), stream.decode(latents[:, 3:])]
    assert torch.equal(torch.cat(parts), whole)
    assert [len(p) for p in parts] == [1, 8, 4]
    stream.reset()
    assert torch.equal(stream.decode(latents), whole)
    # and equal to diffusers' own decode
    with torch.no_grad():
        ref = codec.model.decode(codec.denormalise(latents, 0).unsqueeze(0)).sample[0]
    ref_frames = ref.permute(1, 2, 3, 0).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    assert (whole.int() - ref_frames.int()).abs().max() <= 1


@pytest.mark.parametrize("kind, arch", [("tiny", TINY), ("kl", KL), ("wan", WAN)])
def test_save_load_round_trip(tmp_path, kind, arch):
    torch.manual_seed(0)
    codec = build_video_codec(kind, 32, 4, arch)
    if kind != "wan":
        codec.set_normalisation(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1.5, 1.0, 0.5, 2.0]))
    codec.save(tmp_path / "codec")
    loaded = load_video_codec(tmp_path / "codec")
    frames = _frames(5)
    assert loaded.kind == kind and torch.equal(loaded.latent_std, codec.latent_std)
    assert torch.allclose(loaded.encode(frames), codec.encode(frames), atol=1e-5)


def test_clear_errors(tmp_path):
    codec = build_video_codec("tiny", 32, 4, TINY)
    with pytest.raises(CodecError, match="32x32"):
        codec.encode(_frames(2, size=64))
    with pytest.raises(CodecError, match="uint8"):
        codec.encode(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(CodecError, match="No video codec"):
        load_video_codec(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CodecError, match="which kind"):
        load_video_codec(tmp_path)
    with pytest.raises(CodecError, match="Could not load"):
        load_video_codec(tmp_path, kind="tiny", image_size=32)
    with pytest.raises(CodecError, match="Unknown video codec kind"):
        build_video_codec("vq", 32, 4)


def test_plain_diffusers_wan_checkpoint_loads_with_its_own_normalisation(tmp_path):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan(
        z_dim=4, latents_mean=[0.1, 0.2, 0.3, 0.4], latents_std=[2.0, 1.0, 0.5, 4.0], **WAN
    )
    model.save_pretrained(tmp_path / "wan")  # what a local Wan VAE download looks like: config.json + weights
    codec = load_video_codec(tmp_path / "wan", kind="wan", image_size=32)
    assert codec.temporal_factor == 4 and codec.spatial_factor == 8 and codec.causal_first_frame
    assert codec.latent_std.tolist() == [2.0, 1.0, 0.5, 4.0]
    frames = _frames(5)
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]
        raw = model.encode(x).latent_dist.mode()[0]
    expected = (raw - torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1, 1)) / torch.tensor(
        [2.0, 1.0, 0.5, 4.0]
    ).view(4, 1, 1, 1)
    assert torch.allclose(codec.encode(frames), expected, atol=1e-5)


def test_shipped_tiny_codec_reconstructs_unseen_characters(tmp_path, monkeypatch):
    """The trained codec in checkpoints/tiny/vae is the tiny preset's default, found from any directory."""
    from streamchar.codecs.video import video_codec_from_config
    from streamchar.config import load_config
    from streamchar.data.characters import STYLES, CharacterRenderer, FaceState, sample_identity
    from streamchar.training.vae import evaluate_psnr

    monkeypatch.chdir(tmp_path)  # the relative default path resolves against the repository
    codec = video_codec_from_config(load_config("tiny"))
    assert (codec.kind, codec.image_size, codec.latent_channels) == ("tiny", 128, 8)
    states = [
        FaceState(),
        FaceState(open=0.8, width=0.3, yaw=12.0),
        FaceState(blink=1.0, roll=-6.0, smile=0.8),
    ]
    for style in STYLES:
        frames = np.stack(
            [
                CharacterRenderer(sample_identity(987_654, i, [style]), 128).render(s)
                for i in range(2)
                for s in states
            ]
        )
        assert evaluate_psnr(codec, frames) > 26.0, style  # measured 31.3 / 34.5 / 35.6; random weights ~10
