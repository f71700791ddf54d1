"""MelCodec, Griffin-Lim, and EnCodec with both checkpoint formats."""

import re

import numpy as np
import pytest
import torch

from streamchar.codecs.audio import MelCodec
from streamchar.codecs.base import CodecError
from streamchar.codecs.encodec import EncodecCodec, load_encodec_model, meta_key_to_hf
from streamchar.data.espeak import Voice, get_espeak
from streamchar.media import resample


@pytest.fixture(scope="module")
def speech():
    utt = get_espeak().synthesize("The quick brown fox jumps over the lazy dog.", Voice("en-us", "m3"))
    wave = resample(utt.samples, utt.sample_rate, 16000)
    return wave[: len(wave) // 640 * 640]


def test_mel_token_layout(speech):
    codec = MelCodec()
    latents = codec.encode(speech)
    assert latents.shape == (len(speech) // 640, 320)
    assert abs(latents.mean().item()) < 1.0 and 0.5 < latents.std().item() < 1.5  # normalised
    # token k packs mel frames 4k..4k+3 (frame m centred on sample 160 m)
    logmel = codec.log_mel(speech)[0]
    k = 7
    assert torch.allclose(
        codec.latents_to_log_mel(latents[None])[0, 4 * k : 4 * k + 4], logmel[4 * k : 4 * k + 4], atol=1e-5
    )
    # a click in token 10 shows up in token 10, not elsewhere
    click = np.zeros(640 * 20, np.float32)
    click[640 * 10 + 300] = 1.0
    energy = codec.encode(click).mean(dim=1)
    assert int(energy.argmax()) == 10


def test_batch_equals_single(speech):
    codec = MelCodec(griffin_lim_iters=4)
    batch = torch.from_numpy(np.stack([speech, speech[::-1].copy()]))
    lat = codec.encode(batch)
    assert torch.allclose(lat[0], codec.encode(speech), atol=1e-5)
    waves = codec.decode(lat)
    assert waves.shape == batch.shape
    assert torch.allclose(waves[0], codec.decode(lat[0]), atol=1e-4)


def test_griffin_lim_round_trip_quality(speech):
    codec = MelCodec()
    latents = codec.encode(speech)
    wave = codec.decode(latents)
    assert wave.shape[0] == len(speech)
    again = codec.encode(wave)
    logmel_db = (
        (codec.latents_to_log_mel(latents[None]) - codec.latents_to_log_mel(again[None])).abs().mean()
        * 20
        / np.log(10)
    )
    spec = codec.stft(torch.from_numpy(speech)[None]).abs()
    spec2 = codec.stft(wave[None]).abs()
    convergence = torch.linalg.norm(spec - spec2) / torch.linalg.norm(spec)
    assert logmel_db < 2.5 and convergence < 0.45
    # more Griffin-Lim iterations give a more consistent spectrogram than none
    codec.griffin_lim_iters = 0
    rough = codec.stft(codec.decode(latents)[None]).abs()
    assert torch.linalg.norm(spec - rough) / torch.linalg.norm(spec) > convergence


def test_mel_errors():
    with pytest.raises(CodecError, match="hop_length"):
        MelCodec(hop_length=150)
    with pytest.raises(CodecError, match="shorter than one token"):
        MelCodec().encode(np.zeros(100, np.float32))
    with pytest.raises(CodecError, match="320 dims"):
        MelCodec().decode(torch.zeros(3, 10))


# -- EnCodec ----------------------------------------------------------------------------------------
def _tiny_encodec():
    from transformers import EncodecConfig, EncodecModel

    cfg = EncodecConfig(target_bandwidths=[1.5, 3.0], sampling_rate=24000, audio_channels=1, num_filters=4,
                        num_residual_layers=1, upsampling_ratios=[8, 5, 4, 2], codebook_size=16, codebook_dim=8,
                        hidden_size=8, num_lstm_layers=2, normalize=False)  # fmt: skip
    torch.manual_seed(0)
    return EncodecModel(cfg).eval()


def _as_meta_checkpoint(model) -> dict:
    """The model's weights named as Meta's encodec package names them, built from module types."""
    from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecConvTranspose1d

    state = {}
    for name, module in model.named_modules():
        if isinstance(module, (EncodecConv1d, EncodecConvTranspose1d)):
            wrapper = "conv.conv" if isinstance(module, EncodecConv1d) else "convtr.convtr"
            meta = re.sub(r"^(encoder|decoder)\.layers\.", r"\1.model.", name)
            conv = module.conv
            state[f"{meta}.{wrapper}.bias"] = conv.bias.detach().clone()
            state[f"{meta}.{wrapper}.weight_g"] = conv.parametrizations.weight.original0.detach().clone()
            state[f"{meta}.{wrapper}.weight_v"] = conv.parametrizations.weight.original1.detach().clone()
    for key, value in model.state_dict().items():
        if ".lstm." in key:
            state[re.sub(r"^(encoder|decoder)\.layers\.", r"\1.model.", key)] = value.clone()
        if key.startswith("quantizer."):
            state[
                re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", key)
            ] = value.clone()
    return state


def test_encodec_codec_shapes():
    codec = EncodecCodec(_tiny_encodec())
    assert codec.frames_per_token == 3 and codec.latent_dim == 24
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    latents = codec.encode(wave)
    assert latents.shape == (25, 24)
    assert codec.decode(latents).shape == (16000,)


def test_meta_checkpoint_loads_to_the_same_model(tmp_path):
    model = _tiny_encodec()
    meta_state = _as_meta_checkpoint(model)
    assert any(k.startswith("encoder.model.0.conv.conv.weight_g") for k in meta_state)
    path = tmp_path / "encodec_tiny.th"
    torch.save(meta_state, path)
    (tmp_path / "encodec_tiny.json").write_text(model.config.to_json_string())
    loaded = load_encodec_model(path)
    wave = torch.randn(1, 1, 24000) * 0.1
    with torch.no_grad():
        assert torch.allclose(loaded.encoder(wave), model.encoder(wave), atol=1e-6)
    # and the HF folder format
    model.save_pretrained(tmp_path / "hf")
    hf = load_encodec_model(tmp_path / "hf")
    with torch.no_grad():
        assert torch.allclose(hf.encoder(wave), model.encoder(wave), atol=1e-6)


def test_mismatched_meta_checkpoint_is_refused(tmp_path):
    model = _tiny_encodec()
    state = _as_meta_checkpoint(model)
    state.pop(next(k for k in state if k.endswith("weight_v")))
    torch.save(state, tmp_path / "bad.th")
    (tmp_path / "bad.json").write_text(model.config.to_json_string())
    with pytest.raises(CodecError, match="does not match"):
        load_encodec_model(tmp_path / "bad.th")
    (tmp_path / "junk.th").write_bytes(b"junk")
    with pytest.raises(CodecError, match="corrupt"):
        load_encodec_model(tmp_path / "junk.th")


def test_key_mapping_examples():
    assert meta_key_to_hf("encoder.model.1.block.3.conv.conv.weight_v", True) == (
        "encoder.layers.1.block.3.conv.parametrizations.weight.original1"
    )
    assert meta_key_to_hf("decoder.model.3.convtr.convtr.bias", False) == "decoder.layers.3.conv.bias"
    assert (
        meta_key_to_hf("quantizer.vq.layers.2._codebook.embed", True) == "quantizer.layers.2.codebook.embed"
    )
