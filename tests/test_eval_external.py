"""The external evaluation models' loaders: clear errors for missing files, and tiny random stand-ins in each
published format run through the same wrappers."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import Tensor

from streamchar.eval.published.files import ExternalWeightsError
from streamchar.eval.published.speech import load_wavlm_sv, load_whisper
from streamchar.eval.published.syncnet import SyncNetModel, load_syncnet, score_sync, syncnet_mfcc
from streamchar.eval.published.vision import load_arcface, load_i3d, load_inception

rng = np.random.default_rng(0)


def random_frames(*shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def random_audio(seconds: float) -> np.ndarray:
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


# -- SyncNet --------------------------------------------------------------------------------------------

# Weight shapes of the published SyncNet (syncnet_python's SyncNetModel.S), key for key.
OFFICIAL_SYNCNET_SHAPES = {
    "netcnnaud.0.weight": (64, 1, 3, 3),
    "netcnnaud.4.weight": (192, 64, 3, 3),
    "netcnnaud.8.weight": (384, 192, 3, 3),
    "netcnnaud.11.weight": (256, 384, 3, 3),
    "netcnnaud.14.weight": (256, 256, 3, 3),
    "netcnnaud.18.weight": (512, 256, 5, 4),
    "netcnnaud.19.running_var": (512,),
    "netfcaud.0.weight": (512, 512),
    "netfcaud.1.running_mean": (512,),
    "netfcaud.3.weight": (1024, 512),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7),
    "netcnnlip.1.weight": (96,),
    "netcnnlip.4.weight": (256, 96, 1, 5, 5),
    "netcnnlip.8.weight": (256, 256, 1, 3, 3),
    "netcnnlip.11.weight": (256, 256, 1, 3, 3),
    "netcnnlip.14.weight": (256, 256, 1, 3, 3),
    "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netcnnlip.19.bias": (512,),
    "netfclip.0.weight": (512, 512),
    "netfclip.3.weight": (1024, 512),
    "netfclip.3.bias": (1024,),
}


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    """A randomly initialised SyncNet saved as the official file is: a bare state dict with torch.save."""
    torch.manual_seed(0)
    model = SyncNetModel().eval()
    for module in model.modules():  # non-trivial running statistics, so that a failed load shows
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(model.state_dict(), path)
    return path


def test_syncnet_layout_is_the_official_one():
    state = SyncNetModel().state_dict()
    for key, shape in OFFICIAL_SYNCNET_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    # 12 convolutions (weight, bias) + 12 batch norms (5 tensors each) + 2 heads (2 linear, 1 batch norm)
    assert len(state) == 12 * 2 + 12 * 5 + 2 * (2 * 2 + 5)


def test_syncnet_missing_file_names_it(tmp_path):
    with pytest.raises(ExternalWeightsError, match="syncnet_v2.model") as caught:
        load_syncnet(tmp_path / "weights" / "syncnet_v2.model")
    assert str(tmp_path / "weights" / "syncnet_v2.model") in str(caught.value)
    # a directory is searched for the published file name
    with pytest.raises(ExternalWeightsError) as caught:
        load_syncnet(tmp_path)
    assert str(tmp_path / "syncnet_v2.model") in str(caught.value)


def test_syncnet_loads_the_official_layout_strictly(syncnet_file, tmp_path):
    saved = torch.load(syncnet_file, weights_only=True)
    syncnet = load_syncnet(syncnet_file.parent)
    for key, value in syncnet.model.state_dict().items():
        assert torch.equal(value, saved[key]), key

    # a file from before BatchNorm counted batches still loads
    old = {key: value for key, value in saved.items() if not key.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")
    load_syncnet(tmp_path / "old.model")

    # a state dict of some other network does not
    del saved["netfclip.3.bias"]
    torch.save(saved, tmp_path / "other.model")
    with pytest.raises(ValueError, match="netfclip.3.bias"):
        load_syncnet(tmp_path / "other.model")


def test_syncnet_sync_scores_on_random_weights(syncnet_file):
    syncnet = load_syncnet(syncnet_file)
    frames = random_frames(8, 48, 40)  # 8 frames: 3 scored windows
    audio = random_audio(8 / 25)

    scores = syncnet.sync_scores(frames, audio, batch_size=2)
    assert set(scores) == {"offset", "sync_c", "sync_d"}
    assert isinstance(scores["offset"], int) and -15 <= scores["offset"] <= 15
    assert scores["sync_c"] >= 0 and scores["sync_d"] > 0
    assert all(math.isfinite(value) for value in scores.values())

    assert syncnet.embed_video(frames).shape == (4, 1024)
    mfcc = syncnet.mfcc(audio)
    assert syncnet.embed_audio(mfcc).shape == ((mfcc.shape[1] - 20) // 4 + 1, 1024)
    with pytest.raises(ValueError, match="at least 6 frames"):
        syncnet.sync_scores(frames[:5], audio)


def test_syncnet_streams_get_the_official_inputs(syncnet_file):
    syncnet = load_syncnet(syncnet_file)
    # lips: 5 frames already at 224, in BGR channel order, raw 0..255 values, [N, 3, 5, 224, 224]
    frames = random_frames(5, 224, 224)
    bgr = torch.from_numpy(frames[..., ::-1].copy()).permute(3, 0, 1, 2).float()[None]
    with torch.no_grad():
        expected = syncnet.model.forward_lips(bgr)
    torch.testing.assert_close(syncnet.embed_video(frames), expected, rtol=1e-4, atol=1e-4)

    # audio: window k is MFCC frames 4k .. 4k + 19
    mfcc = torch.randn(13, 40)
    with torch.no_grad():
        expected = syncnet.model.forward_audio(torch.stack([mfcc[:, 0:20], mfcc[:, 8:28]])[:, None])
    torch.testing.assert_close(syncnet.embed_audio(mfcc)[[0, 2]], expected, rtol=1e-4, atol=1e-4)


def test_score_sync_finds_a_known_shift():
    generator = torch.Generator().manual_seed(0)
    lips = torch.randn(40, 8, generator=generator)
    # the sound of video window i sits at audio window i + 3: the audio lags, so the offset is -3
    audio = torch.cat([torch.randn(3, 8, generator=generator), lips[:-3]])
    scores = score_sync(lips, audio, max_offset=5)
    assert scores["offset"] == -3
    assert scores["sync_c"] > 1.0

    # and the other way round
    audio = torch.cat([lips[2:], torch.randn(2, 8, generator=generator)])
    assert score_sync(lips, audio, max_offset=5)["offset"] == 2


def test_syncnet_mfcc_follows_the_python_speech_features_recipe():
    audio = random_audio(0.4)  # 6400 samples, 10 video frames
    mfcc = syncnet_mfcc(audio)
    n_frames = 1 + math.ceil((len(audio) - 400) / 160)
    assert mfcc.shape == (13, n_frames) and mfcc.dtype == np.float32
    assert (mfcc.shape[1] - 20) // 4 + 1 >= 10 - 5  # enough audio windows for every scored video window

    # coefficient 0 is the log energy of the pre-emphasised 16-bit frame's 512-point power spectrum
    signal = audio.astype(np.float64) * 32768
    emphasised = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    frame = emphasised[160 * 7 : 160 * 7 + 400]
    energy = (np.abs(np.fft.rfft(frame, n=512)) ** 2 / 512).sum()
    assert mfcc[0, 7] == pytest.approx(np.log(energy), rel=1e-5)
    with pytest.raises(ValueError, match="resample"):
        syncnet_mfcc(audio, sample_rate=22050)


# -- Whisper --------------------------------------------------------------------------------------------

WHISPER_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|notimestamps|>",
]


def write_tiny_whisper(folder) -> None:
    """A 1-layer Whisper with a 27-letter byte-level vocabulary and a 1 s window, in the Hugging Face layout."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    vocab = {letter: i for i, letter in enumerate("abcdefghijklmnopqrstuvwxyzĠ")}
    for token in WHISPER_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    added = {
        str(vocab[token]): {
            "content": token,
            "special": True,
            "normalized": False,
            "lstrip": False,
            "rstrip": False,
        }
        for token in WHISPER_SPECIAL_TOKENS
    }
    tokenizer_config = {"tokenizer_class": "WhisperTokenizer", "added_tokens_decoder": added}
    tokenizer_config.update(
        dict.fromkeys(["bos_token", "eos_token", "unk_token", "pad_token"], "<|endoftext|>")
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    end, start = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=16,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=50,  # 100 mel frames: a 1 s window
        max_target_positions=32,
        decoder_start_token_id=start,
        eos_token_id=end,
        pad_token_id=end,
        bos_token_id=end,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start,
        eos_token_id=end,
        pad_token_id=end,
        max_length=12,
        is_multilingual=True,
        lang_to_id={"<|en|>": vocab["<|en|>"]},
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"],
    )
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(folder)


def test_whisper_missing_files_are_named(tmp_path):
    with pytest.raises(ExternalWeightsError) as caught:
        load_whisper(tmp_path / "whisper")
    assert str(tmp_path / "whisper" / "config.json") in str(caught.value)

    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "vocab.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(ExternalWeightsError, match="merges.txt"):  # the nearest-complete tokenizer's gap
        load_whisper(tmp_path)
    (tmp_path / "merges.txt").write_text("")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ExternalWeightsError, match="model.safetensors"):
        load_whisper(tmp_path)


def test_whisper_transcribes_with_a_tiny_checkpoint(tmp_path):
    write_tiny_whisper(tmp_path)
    transcriber = load_whisper(tmp_path)
    text = transcriber.transcribe(random_audio(0.5))
    assert isinstance(text, str)
    assert "<|" not in text  # special tokens are dropped
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz ")
    with pytest.raises(ValueError, match="split the audio"):
        transcriber.transcribe(random_audio(1.5))


# -- WavLM speaker verification ---------------------------------------------------------------------------


def test_wavlm_missing_files_are_named(tmp_path):
    with pytest.raises(ExternalWeightsError, match="config.json"):
        load_wavlm_sv(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ExternalWeightsError) as caught:
        load_wavlm_sv(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(caught.value)


def test_wavlm_embeds_with_a_tiny_checkpoint(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        tdnn_dim=(8, 8),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=6,
        num_buckets=16,
        max_bucket_distance=32,
    )
    torch.manual_seed(0)
    WavLMForXVector(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(tmp_path)

    verifier = load_wavlm_sv(tmp_path)
    clip, other = random_audio(0.5), random_audio(0.5)
    embedding = verifier.embed(clip)
    assert embedding.shape == (6,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    assert verifier.similarity(clip, clip) == pytest.approx(1.0, abs=1e-5)
    assert verifier.similarity(clip, other) < 1.0 - 1e-6


# -- Inception (FID) and I3D (FVD) -------------------------------------------------------------------------


class InceptionStandIn(torch.nn.Module):
    """The call signature of NVIDIA's TorchScript Inception; features: the mean raw pixel value, repeated."""

    def forward(
        self, img: Tensor, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False
    ) -> Tensor:
        if img.dtype != torch.uint8 or img.shape[1] != 3:
            raise ValueError("expected uint8 NCHW images")
        mean = img.float().mean(dim=(1, 2, 3)).unsqueeze(1)
        return mean.expand(-1, 2048 if return_features else 1008)


class I3DStandIn(torch.nn.Module):
    """The call signature of StyleGAN-V's TorchScript I3D; features: the mean input value, repeated."""

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        if rescale or resize or not return_features:
            raise ValueError("expected rescale=False, resize=False, return_features=True")
        if x.shape[1] != 3 or x.shape[3] != 224 or x.shape[4] != 224 or x.min() < -1.0 or x.max() > 1.0:
            raise ValueError("expected [N, 3, T, 224, 224] in [-1, 1]")
        return x.mean(dim=(1, 2, 3, 4)).unsqueeze(1).expand(-1, 400)


def test_inception_and_i3d_missing_files_are_named(tmp_path):
    with pytest.raises(ExternalWeightsError) as caught:
        load_inception(tmp_path)
    assert str(tmp_path / "inception-2015-12-05.pt") in str(caught.value)
    with pytest.raises(ExternalWeightsError) as caught:
        load_i3d(tmp_path / "fvd" / "i3d_torchscript.pt")
    assert str(tmp_path / "fvd" / "i3d_torchscript.pt") in str(caught.value)


def test_inception_features_with_a_scripted_stand_in(tmp_path):
    torch.jit.script(InceptionStandIn()).save(str(tmp_path / "inception-2015-12-05.pt"))
    inception = load_inception(tmp_path)
    frames = np.full((5, 40, 30, 3), 200, dtype=np.uint8)
    features = inception.features(frames, batch_size=2)
    assert features.shape == (5, 2048) and features.dtype == np.float32
    np.testing.assert_allclose(features, 200.0)  # raw uint8 values, nothing rescaled on the way
    with pytest.raises(ValueError, match="uint8"):
        inception.features(frames.astype(np.float32))

    # a state dict is not the TorchScript network
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="TorchScript"):
        load_inception(tmp_path / "state.pt")


def test_i3d_features_with_a_scripted_stand_in(tmp_path):
    torch.jit.script(I3DStandIn()).save(str(tmp_path / "i3d_torchscript.pt"))
    i3d = load_i3d(tmp_path / "i3d_torchscript.pt")
    white = np.full((2, 4, 32, 48, 3), 255, dtype=np.uint8)
    black = np.zeros((1, 4, 32, 48, 3), dtype=np.uint8)
    features = i3d.features(np.concatenate([white, black]), batch_size=2)
    assert features.shape == (3, 400) and features.dtype == np.float32
    np.testing.assert_allclose(features[:2], 1.0, atol=1e-6)  # 255 -> +1
    np.testing.assert_allclose(features[2], -1.0, atol=1e-6)  # 0 -> -1


# -- ArcFace (identity) ------------------------------------------------------------------------------------


def test_arcface_missing_file_is_named(tmp_path):
    with pytest.raises(ExternalWeightsError) as caught:
        load_arcface(tmp_path / "models" / "glintr100.onnx")
    assert str(tmp_path / "models" / "glintr100.onnx") in str(caught.value)
    with pytest.raises(ExternalWeightsError, match="w600k_r50.onnx"):
        load_arcface(tmp_path)


def test_arcface_without_onnxruntime_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "w600k_r50.onnx").write_bytes(b"not read before the package check")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails, installed or not
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        load_arcface(tmp_path)


def test_arcface_embeds_with_a_tiny_onnx_model(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is an optional dependency")
    onnx = pytest.importorskip("onnx", reason="building the stand-in model needs the onnx package")
    from onnx import TensorProto, helper, numpy_helper

    # embedding = per-channel mean of the normalised pixels, through a 3 x 3 identity
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input.1"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "projection"], ["embedding"]),
        ],
        "arcface_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.eye(3, dtype=np.float32), "projection")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "w600k_r50.onnx")

    arcface = load_arcface(tmp_path)
    faces = np.concatenate([np.full((1, 64, 64, 3), 255, np.uint8), np.zeros((2, 64, 64, 3), np.uint8)])
    embeddings = arcface.embed(faces)
    assert embeddings.shape == (3, 3)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embeddings[0], 1 / np.sqrt(3), atol=1e-6)  # 255 -> +1 before normalising
    np.testing.assert_allclose(embeddings[1:], -1 / np.sqrt(3), atol=1e-6)  # 0 -> -1
