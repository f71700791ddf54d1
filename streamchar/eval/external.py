"""Loaders for externally published evaluation models, read only from paths the user gives.

| loader             | model                                                         | files                         |
|--------------------|---------------------------------------------------------------|-------------------------------|
| ``load_syncnet``   | SyncNet (Chung & Zisserman 2016), lip sync: Sync-C / Sync-D   | ``syncnet_v2.model``          |
| ``load_whisper``   | Whisper speech recognition (Hugging Face layout), for WER     | a checkpoint directory        |
| ``load_wavlm_sv``  | WavLM x-vector speaker verification (wavlm-base-plus-sv)      | a checkpoint directory        |
| ``load_inception`` | Inception-v3 of NVIDIA's stylegan2-ada-pytorch metrics, FID   | ``inception-2015-12-05.pt``   |
| ``load_i3d``       | Kinetics-400 I3D of StyleGAN-V, FVD                           | ``i3d_torchscript.pt``        |
| ``load_arcface``   | InsightFace ArcFace (ONNX), identity similarity               | e.g. ``w600k_r50.onnx``       |

Nothing here downloads. Every loader first checks that each file it needs is on disk and raises
:class:`ExternalWeightsError` naming the first missing one; a loader whose optional package is absent
(onnxruntime for ArcFace) says which ``pip install`` fixes it. Where a loader takes a single weights file,
a directory is also accepted and the file's published name is looked up inside it. Every wrapper runs its
model under ``torch.no_grad()`` on the ``device`` it was loaded for (``"cpu"`` unless told otherwise).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# SyncNet's inputs are fixed by the published model, independent of StreamChar's timeline.
SYNCNET_FPS = 25
SYNCNET_SAMPLE_RATE = 16000
SYNCNET_IMAGE_SIZE = 224
SYNCNET_WINDOW_FRAMES = 5  # video frames per lip window (0.2 s)
SYNCNET_MFCC_PER_FRAME = 4  # 100 Hz MFCC frames per 25 fps video frame
SYNCNET_MFCC_WINDOW = 20  # MFCC frames per audio window (0.2 s)
SYNCNET_EMBEDDING_DIM = 1024

# The other models' published input conventions.
SPEECH_SAMPLE_RATE = 16000  # Whisper and WavLM
I3D_IMAGE_SIZE = 224
ARCFACE_IMAGE_SIZE = 112

WeightsPath = str | Path


class ExternalWeightsError(FileNotFoundError):
    """A file of an external evaluation model is not where the user said it would be."""


# -- shared helpers ---------------------------------------------------------------------------------


def _require_package(module: str, purpose: str, pip_hint: str) -> ModuleType:
    """Import an optional package, or say in one sentence how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{purpose} needs the optional package {module}, which is not installed; {pip_hint}."
        ) from err


def _weights_file(path: WeightsPath, published_name: str, what: str, hint: str) -> Path:
    """The weights file at ``path`` (or ``published_name`` inside it, when ``path`` is a directory)."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / published_name
    if not file.is_file():
        raise ExternalWeightsError(f"{what} not found: {file}; {hint}.")
    return file


def _checkpoint_dir(
    path: WeightsPath, what: str, requirements: Sequence[Sequence[Sequence[str]]], hint: str
) -> Path:
    """Check a checkpoint directory file by file.

    ``requirements`` holds, for each thing the checkpoint needs, the alternative sets of files that
    provide it (e.g. ``tokenizer.json`` or ``vocab.json`` with ``merges.txt``). When no set is complete,
    the error names the first missing file of the set that is nearest to complete.
    """
    folder = Path(path).expanduser()
    for alternatives in requirements:
        if any(all((folder / name).is_file() for name in names) for names in alternatives):
            continue
        nearest = max(alternatives, key=lambda names: sum((folder / name).is_file() for name in names))
        missing = next(folder / name for name in nearest if not (folder / name).is_file())
        raise ExternalWeightsError(f"{what} file not found: {missing}; {hint}.")
    return folder


_HF_WEIGHTS = (
    ("model.safetensors",),
    ("model.safetensors.index.json",),
    ("pytorch_model.bin",),
    ("pytorch_model.bin.index.json",),
)


def _load_torchscript(file: Path, what: str, hint: str, device: torch.device) -> torch.jit.ScriptModule:
    try:
        model = torch.jit.load(str(file), map_location=device)
    except RuntimeError as err:
        raise ValueError(f"{file} is not a TorchScript archive, so it cannot be the {what}; {hint}.") from err
    return model.eval()


def _uint8_tensor(array: np.ndarray | torch.Tensor, layout: str, ndim: int, name: str) -> torch.Tensor:
    """``array`` as a uint8 tensor of ``ndim`` dimensions whose last is 3 (RGB), or a clear error."""
    tensor = torch.as_tensor(array)
    if tensor.dtype != torch.uint8 or tensor.ndim != ndim or tensor.shape[-1] != 3:
        raise ValueError(
            f"{name} must be uint8 RGB {layout}, got shape {tuple(tensor.shape)} and dtype {tensor.dtype}."
        )
    return tensor


def _audio_array(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    waveform = np.asarray(audio.cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"audio must be mono float32 [samples], got shape {waveform.shape}.")
    return waveform


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float ``[N, C, H, W]`` to ``size`` x ``size`` (a no-op when already there)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


# -- SyncNet ------------------------------------------------------------------------------------------


def syncnet_mfcc(audio: np.ndarray, sample_rate: int = SYNCNET_SAMPLE_RATE) -> np.ndarray:
    """The 13 MFCCs SyncNet's audio stream reads, ``[13, M]`` at 100 Hz (25 ms rectangular windows).

    The official code computes them with ``python_speech_features.mfcc`` on 16-bit PCM. This follows
    its recipe with librosa's framing and mel filterbank: the float waveform is scaled to the 16-bit
    range, pre-emphasised (0.97), cut into 400-sample frames every 160 samples (the last one zero
    padded), turned into a 512-point power spectrum, pooled by 26 HTK mel filters from 0 Hz to Nyquist,
    logged, DCT-ed (type II, orthonormal), liftered (22), and coefficient 0 is replaced by the frame's
    log energy. It approximates the official features rather than reproducing them bit for bit: librosa
    places the mel triangles on continuous frequencies where python_speech_features rounds their edges
    to FFT bins.
    """
    import librosa
    import scipy.fft

    if sample_rate != SYNCNET_SAMPLE_RATE:
        raise ValueError(
            f"SyncNet reads {SYNCNET_SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample it first."
        )
    frame_length, hop_length, n_fft, n_mels, n_mfcc, lifter = 400, 160, 512, 26, 13, 22
    eps = np.finfo(np.float64).eps

    # 1. 16-bit scale and pre-emphasis
    signal = _audio_array(audio).astype(np.float64) * 32768.0
    signal = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    # 2. frames, the last one zero padded: [M, 400]
    n_frames = 1 if len(signal) <= frame_length else 1 + math.ceil((len(signal) - frame_length) / hop_length)
    padded = np.zeros((n_frames - 1) * hop_length + frame_length)
    padded[: len(signal)] = signal
    frames = librosa.util.frame(padded, frame_length=frame_length, hop_length=hop_length, axis=0)
    # 3. power spectrum [M, 257] and frame energy [M]
    power = np.abs(np.fft.rfft(frames, n=n_fft)) ** 2 / n_fft
    energy = np.maximum(power.sum(axis=1), eps)
    # 4. log mel energies [M, 26] -> cepstra [M, 13]
    mel_basis = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2, htk=True, norm=None
    )
    log_mel = np.log(np.maximum(power @ mel_basis.T, eps))
    cepstra = scipy.fft.dct(log_mel, type=2, axis=1, norm="ortho")[:, :n_mfcc]
    cepstra *= 1 + (lifter / 2) * np.sin(np.pi * np.arange(n_mfcc) / lifter)
    cepstra[:, 0] = np.log(energy)
    return cepstra.T.astype(np.float32)


def _conv_bn_relu(conv: nn.Conv2d | nn.Conv3d) -> list[nn.Module]:
    norm = nn.BatchNorm2d if isinstance(conv, nn.Conv2d) else nn.BatchNorm3d
    return [conv, norm(conv.out_channels), nn.ReLU()]


def _embedding_head(embedding_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim))


class SyncNetModel(nn.Module):
    """The two-stream SyncNet of syncnet_python, laid out so that ``syncnet_v2.model`` loads strictly.

    The attribute names and the positions inside each ``nn.Sequential`` are those of the official state
    dict (``netcnnaud.0.weight`` ... ``netfclip.3.bias``); layers without weights (ReLU, pooling) keep
    their positions so that the numbering of the others matches.
    """

    def __init__(self, embedding_dim: int = SYNCNET_EMBEDDING_DIM) -> None:
        super().__init__()
        # MFCC [N, 1, 13, 20] -> [N, 512, 1, 1]
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1)),
            nn.Identity(),  # a 1x1 max-pool in the original
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1)),
            nn.MaxPool2d(3, stride=(1, 2)),  # -> 11 x 9
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1)),
            nn.MaxPool2d(3, stride=2),  # -> 5 x 4
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4))),  # -> 1 x 1
        )
        self.netfcaud = _embedding_head(embedding_dim)
        # BGR frames [N, 3, 5, 224, 224] -> [N, 512, 1, 1, 1]
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2))),  # -> 1 x 109 x 109
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),  # -> 54
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1))),  # -> 26
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # -> 13
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),  # -> 6
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6))),  # -> 1
        )
        self.netfclip = _embedding_head(embedding_dim)

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """MFCC windows ``[N, 1, 13, 20]`` -> embeddings ``[N, 1024]``."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lips(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame windows ``[N, 3, 5, 224, 224]`` (BGR, 0..255) -> embeddings ``[N, 1024]``."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def score_sync(
    video_embeddings: torch.Tensor, audio_embeddings: torch.Tensor, max_offset: int = 15
) -> dict[str, float | int]:
    """SyncNet's offset search over paired window embeddings ``[N, D]`` (window ``i`` of both at frame ``i``).

    Each video window is compared with the audio windows ``-max_offset .. +max_offset`` frames away
    (audio beyond either end counts as zero embeddings, as in the official code); the Euclidean distances
    are averaged over time per shift. ``offset`` uses the official sign: positive when the audio runs
    ahead of the video (the sound of frame ``t`` sits at audio frame ``t - offset``). ``sync_d`` is the
    smallest mean distance and ``sync_c`` the median mean distance minus that minimum.
    """
    if max_offset < 0:
        raise ValueError(f"max_offset must be zero or more, got {max_offset}.")
    if video_embeddings.shape != audio_embeddings.shape:
        raise ValueError(
            f"video and audio embeddings must pair up window by window, got {tuple(video_embeddings.shape)} "
            f"and {tuple(audio_embeddings.shape)}."
        )
    windows = video_embeddings.shape[0]
    padded_audio = F.pad(audio_embeddings, (0, 0, max_offset, max_offset))  # [N + 2 * max_offset, D]
    distances = torch.stack(
        [
            F.pairwise_distance(video_embeddings, padded_audio[shift : shift + windows])
            for shift in range(2 * max_offset + 1)
        ],
        dim=1,
    )  # [N, 2 * max_offset + 1]; column j pairs video i with audio i + j - max_offset
    mean_distance = distances.mean(dim=0)
    min_distance, best = torch.min(mean_distance, dim=0)
    return {
        "offset": max_offset - int(best),
        "sync_c": float(torch.median(mean_distance) - min_distance),
        "sync_d": float(min_distance),
    }


class OfficialSyncNet:
    """Sync-C / Sync-D with the official SyncNet weights, following syncnet_python's evaluation.

    Frames are face crops, uint8 RGB ``[T, H, W, 3]`` at 25 fps; they are resized to 224 x 224 and
    handed to the lip stream as BGR values in 0..255, as the official code (reading frames with OpenCV)
    does. Audio is mono float32 in [-1, 1] at 16 kHz.
    """

    def __init__(self, model: SyncNetModel, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def mfcc(self, audio: np.ndarray) -> torch.Tensor:
        """Audio ``[samples]`` at 16 kHz -> MFCC ``[13, M]`` at 100 Hz (see :func:`syncnet_mfcc`)."""
        return torch.from_numpy(syncnet_mfcc(audio))

    @torch.no_grad()
    def embed_audio(self, mfcc: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """MFCC ``[13, M]`` -> one embedding per video frame ``[(M - 20) // 4 + 1, 1024]``.

        Window ``i`` covers MFCC frames ``4 i .. 4 i + 19``: the 0.2 s of audio under video frames
        ``i .. i + 4``.
        """
        mfcc = torch.as_tensor(mfcc, dtype=torch.float32)
        if mfcc.ndim != 2 or mfcc.shape[0] != 13 or mfcc.shape[1] < SYNCNET_MFCC_WINDOW:
            raise ValueError(
                f"mfcc must be [13, M] with M >= {SYNCNET_MFCC_WINDOW}, got {tuple(mfcc.shape)}."
            )
        windows = mfcc.unfold(1, SYNCNET_MFCC_WINDOW, SYNCNET_MFCC_PER_FRAME).permute(1, 0, 2)  # [W, 13, 20]
        embeddings = [
            self.model.forward_audio(windows[start : start + batch_size, None].to(self.device))
            for start in range(0, windows.shape[0], batch_size)
        ]
        return torch.cat(embeddings).cpu()

    @torch.no_grad()
    def embed_video(self, frames: np.ndarray | torch.Tensor, batch_size: int = 20) -> torch.Tensor:
        """Frames uint8 RGB ``[T, H, W, 3]`` -> one embedding per 5-frame window ``[T - 4, 1024]``."""
        frames = _uint8_tensor(frames, "[T, H, W, 3]", 4, "frames")
        windows = frames.shape[0] - SYNCNET_WINDOW_FRAMES + 1
        if windows < 1:
            raise ValueError(f"SyncNet needs at least {SYNCNET_WINDOW_FRAMES} frames, got {frames.shape[0]}.")
        embeddings = []
        for start in range(0, windows, batch_size):
            count = min(batch_size, windows - start)
            clip = frames[start : start + count + SYNCNET_WINDOW_FRAMES - 1].to(self.device)
            clip = _resize(clip.permute(0, 3, 1, 2).float(), SYNCNET_IMAGE_SIZE)  # [F, 3, 224, 224]
            clip = clip.flip(1).permute(1, 0, 2, 3)  # BGR, as OpenCV reads frames: [3, F, 224, 224]
            batch = torch.stack([clip[:, i : i + SYNCNET_WINDOW_FRAMES] for i in range(count)])
            embeddings.append(self.model.forward_lips(batch))  # batch: [B, 3, 5, 224, 224]
        return torch.cat(embeddings).cpu()

    def sync_scores(
        self, frames: np.ndarray | torch.Tensor, audio: np.ndarray, max_offset: int = 15, batch_size: int = 20
    ) -> dict[str, float | int]:
        """Offset (video frames), Sync-C and Sync-D of a talking-face clip (see :func:`score_sync`)."""
        frames = _uint8_tensor(frames, "[T, H, W, 3]", 4, "frames")
        audio = _audio_array(audio)
        samples_per_frame = SYNCNET_SAMPLE_RATE // SYNCNET_FPS
        if abs(len(audio) / SYNCNET_SAMPLE_RATE - len(frames) / SYNCNET_FPS) > 1 / SYNCNET_FPS:
            logger.warning(
                "Audio (%.3f s) and video (%.3f s) lengths differ; scoring their common part.",
                len(audio) / SYNCNET_SAMPLE_RATE,
                len(frames) / SYNCNET_FPS,
            )

        # 1. the common length; like the official code, the last full window is left out
        common_frames = min(len(frames), len(audio) // samples_per_frame)
        windows = common_frames - SYNCNET_WINDOW_FRAMES
        if windows < 1:
            raise ValueError(
                f"SyncNet scoring needs at least {SYNCNET_WINDOW_FRAMES + 1} frames with audio under them, "
                f"got {common_frames}."
            )
        # 2. one lip and one audio embedding per window start
        video_embeddings = self.embed_video(frames[: windows + SYNCNET_WINDOW_FRAMES - 1], batch_size)
        audio_embeddings = self.embed_audio(self.mfcc(audio))[:windows]
        # 3. the offset search
        return score_sync(video_embeddings, audio_embeddings, max_offset)


def load_syncnet(path: WeightsPath, device: str | torch.device = "cpu") -> OfficialSyncNet:
    """The official SyncNet from ``syncnet_v2.model`` (the file itself, or a directory holding it)."""
    file = _weights_file(
        path,
        "syncnet_v2.model",
        "SyncNet weights",
        "pass the path of the official SyncNet weights (syncnet_v2.model from the syncnet_python release)",
    )
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(
            f"{file} holds a {type(state).__name__}, not the state dict of the official SyncNet."
        )
    model = SyncNetModel()
    try:
        # BatchNorm fills in num_batches_tracked for state dicts saved before PyTorch had it
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{file} does not hold the official SyncNet weights: {err}") from err
    logger.info("Loaded SyncNet from %s", file)
    return OfficialSyncNet(model, device)


# -- Whisper ------------------------------------------------------------------------------------------


class WhisperTranscriber:
    """English speech recognition with greedy decoding, for word error rates."""

    def __init__(self, model: Any, processor: Any, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor

    @torch.no_grad()
    def transcribe(self, audio: np.ndarray, max_new_tokens: int | None = None) -> str:
        """Mono float32 audio at 16 kHz (at most one Whisper window, 30 s) -> its transcript."""
        audio = _audio_array(audio)
        extractor = self.processor.feature_extractor
        if len(audio) > extractor.n_samples:
            raise ValueError(
                f"Whisper transcribes at most {extractor.n_samples / SPEECH_SAMPLE_RATE:g} s at a time, got "
                f"{len(audio) / SPEECH_SAMPLE_RATE:.1f} s; split the audio into shorter clips."
            )
        features = extractor(audio, sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="pt").input_features
        options: dict[str, Any] = {"num_beams": 1, "do_sample": False}
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        if getattr(self.model.generation_config, "is_multilingual", False):
            # English-only checkpoints (*.en) refuse a language; multilingual ones must be told
            options.update(language="en", task="transcribe")
        token_ids = self.model.generate(features.to(self.device, self.model.dtype), **options)
        return self.processor.batch_decode(token_ids, skip_special_tokens=True)[0].strip()


def load_whisper(path: WeightsPath, device: str | torch.device = "cpu") -> WhisperTranscriber:
    """Whisper from a local Hugging Face checkpoint directory (e.g. a copy of openai/whisper-large-v3)."""
    folder = _checkpoint_dir(
        path,
        "Whisper checkpoint",
        (
            (("config.json",),),
            (("generation_config.json",),),
            (("preprocessor_config.json",),),
            (("tokenizer.json",), ("vocab.json", "merges.txt", "tokenizer_config.json")),
            _HF_WEIGHTS,
        ),
        "pass the directory of a local Hugging Face Whisper checkpoint (e.g. a download of "
        "openai/whisper-large-v3) with its configs, tokenizer and weights",
    )
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    logger.info("Loaded Whisper from %s", folder)
    return WhisperTranscriber(model, processor, device)


# -- WavLM speaker verification -----------------------------------------------------------------------


class SpeakerVerifier:
    """Speaker embeddings from WavLM's x-vector head, L2-normalised as its model card compares them."""

    def __init__(self, model: Any, feature_extractor: Any, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.feature_extractor = feature_extractor

    @torch.no_grad()
    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at 16 kHz -> unit-length speaker embedding ``[D]`` (512 for base-plus-sv)."""
        inputs = self.feature_extractor(
            _audio_array(audio), sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="pt"
        )
        embedding = self.model(input_values=inputs.input_values.to(self.device)).embeddings  # [1, D]
        return F.normalize(embedding, dim=-1)[0].float().cpu().numpy()

    def similarity(self, audio_a: np.ndarray, audio_b: np.ndarray) -> float:
        """Cosine similarity of two clips' speaker embeddings (the model card's same-speaker cut is 0.86)."""
        return float(self.embed(audio_a) @ self.embed(audio_b))


def load_wavlm_sv(path: WeightsPath, device: str | torch.device = "cpu") -> SpeakerVerifier:
    """WavLM speaker verification from a local checkpoint directory (e.g. microsoft/wavlm-base-plus-sv)."""
    folder = _checkpoint_dir(
        path,
        "WavLM speaker-verification checkpoint",
        ((("config.json",),), (("preprocessor_config.json",),), _HF_WEIGHTS),
        "pass the directory of a local copy of microsoft/wavlm-base-plus-sv (config.json, "
        "preprocessor_config.json and the weights)",
    )
    from transformers import AutoFeatureExtractor, WavLMForXVector

    feature_extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    model = WavLMForXVector.from_pretrained(folder, local_files_only=True)
    logger.info("Loaded WavLM speaker verification from %s", folder)
    return SpeakerVerifier(model, feature_extractor, device)


# -- Inception (FID) ----------------------------------------------------------------------------------


class InceptionFeatures:
    """The 2048-d pool features of NVIDIA's TorchScript Inception-v3, the features FID is computed on.

    Frames go in as uint8 NCHW at their own size, as in stylegan2-ada-pytorch's metrics: the network
    converts and resizes them to 299 x 299 itself.
    """

    def __init__(self, model: torch.jit.ScriptModule, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def features(self, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Frames uint8 RGB ``[N, H, W, 3]`` -> features ``[N, 2048]`` (float32)."""
        frames = _uint8_tensor(frames, "[N, H, W, 3]", 4, "frames")
        features = [
            self.model(batch.to(self.device).permute(0, 3, 1, 2).contiguous(), return_features=True)
            for batch in frames.split(batch_size)
        ]
        return torch.cat(features).float().cpu().numpy()


def load_inception(path: WeightsPath, device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID Inception-v3 from ``inception-2015-12-05.pt`` (the file itself, or a directory holding it)."""
    hint = (
        "pass the path of the TorchScript Inception-v3 that NVIDIA's stylegan2-ada-pytorch metrics use for FID "
        "(inception-2015-12-05.pt)"
    )
    file = _weights_file(path, "inception-2015-12-05.pt", "FID Inception weights", hint)
    model = _load_torchscript(file, "FID Inception", hint, torch.device(device))
    logger.info("Loaded the FID Inception from %s", file)
    return InceptionFeatures(model, device)


# -- I3D (FVD) ----------------------------------------------------------------------------------------


class I3DFeatures:
    """The 400-d logits of StyleGAN-V's TorchScript I3D (Kinetics-400), the features FVD is computed on.

    Videos are resized to 224 x 224 (bilinear) and scaled to [-1, 1] here, and the network is told not
    to do either itself (``rescale=False, resize=False``), as in the reference FVD preprocessing.
    """

    def __init__(self, model: torch.jit.ScriptModule, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def features(self, videos: np.ndarray | torch.Tensor, batch_size: int = 8) -> np.ndarray:
        """Videos uint8 RGB ``[N, T, H, W, 3]`` -> features ``[N, 400]`` (float32)."""
        videos = _uint8_tensor(videos, "[N, T, H, W, 3]", 5, "videos")
        features = []
        for batch in videos.split(batch_size):
            count, length = batch.shape[:2]
            frames = batch.to(self.device).flatten(0, 1).permute(0, 3, 1, 2).float()  # [B * T, 3, H, W]
            frames = (_resize(frames, I3D_IMAGE_SIZE) / 127.5 - 1.0).clamp(-1.0, 1.0)  # resize rounding
            clips = frames.unflatten(0, (count, length)).transpose(1, 2).contiguous()  # [B, 3, T, 224, 224]
            features.append(self.model(clips, rescale=False, resize=False, return_features=True))
        return torch.cat(features).float().cpu().numpy()


def load_i3d(path: WeightsPath, device: str | torch.device = "cpu") -> I3DFeatures:
    """The FVD I3D from ``i3d_torchscript.pt`` (the file itself, or a directory holding it)."""
    hint = "pass the path of the TorchScript I3D that StyleGAN-V uses for FVD (i3d_torchscript.pt)"
    file = _weights_file(path, "i3d_torchscript.pt", "FVD I3D weights", hint)
    model = _load_torchscript(file, "FVD I3D", hint, torch.device(device))
    logger.info("Loaded the FVD I3D from %s", file)
    return I3DFeatures(model, device)


# -- ArcFace (identity) -------------------------------------------------------------------------------


class ArcFaceEmbedder:
    """Identity embeddings from an InsightFace ArcFace ONNX model, L2-normalised as InsightFace does.

    Faces must already be aligned crops (InsightFace's five-point similarity transform to 112 x 112);
    other sizes are resized bilinearly. Pixels go in as RGB, (x - 127.5) / 127.5, NCHW.
    """

    def __init__(self, session: Any, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        # the crops are resized on ``device``; the session runs where load_arcface built it
        self.device = torch.device(device)
        self.session = session
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        batch_dim, _, height, width = model_input.shape
        self.image_size = height if isinstance(height, int) and height == width else ARCFACE_IMAGE_SIZE
        # some exports fix the batch size (usually to 1)
        self.batch_size = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else batch_size

    @torch.no_grad()
    def embed(self, faces: np.ndarray | torch.Tensor) -> np.ndarray:
        """Aligned faces uint8 RGB ``[N, H, W, 3]`` -> unit-length embeddings ``[N, D]`` (512 for w600k)."""
        faces = _uint8_tensor(faces, "[N, H, W, 3]", 4, "faces")
        pixels = _resize(faces.to(self.device).permute(0, 3, 1, 2).float(), self.image_size)
        pixels = ((pixels - 127.5) / 127.5).cpu().numpy()  # [N, 3, 112, 112]
        embeddings = np.concatenate(
            [
                self.session.run(None, {self.input_name: pixels[start : start + self.batch_size]})[0]
                for start in range(0, len(pixels), self.batch_size)
            ]
        )
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def load_arcface(path: WeightsPath, device: str | torch.device = "cpu") -> ArcFaceEmbedder:
    """ArcFace from an InsightFace ONNX file (the file itself, or a directory holding ``w600k_r50.onnx``)."""
    file = _weights_file(
        path,
        "w600k_r50.onnx",
        "ArcFace ONNX model",
        "pass the path of an InsightFace ArcFace recognition model in ONNX format "
        "(e.g. w600k_r50.onnx from the buffalo_l pack)",
    )
    onnxruntime = _require_package(
        "onnxruntime", "ArcFace", "pip install onnxruntime (or onnxruntime-gpu to run it on CUDA)"
    )
    target = torch.device(device)
    providers: list[Any] = ["CPUExecutionProvider"]
    if target.type == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": target.index or 0}))
    session = onnxruntime.InferenceSession(str(file), providers=providers)
    logger.info("Loaded ArcFace from %s", file)
    return ArcFaceEmbedder(session, device)
