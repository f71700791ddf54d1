"""The official SyncNet (Chung & Zisserman 2016) for Sync-C / Sync-D: its MFCC front-end, the two-stream
network laid out so that ``syncnet_v2.model`` loads strictly, and syncnet_python's offset search."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamchar.eval.published.files import (
    WeightsPath,
    audio_array,
    resize_square,
    uint8_tensor,
    weights_file,
)

logger = logging.getLogger(__name__)

# SyncNet's inputs are fixed by the published model, independent of StreamChar's timeline.
SYNCNET_FPS = 25
SYNCNET_SAMPLE_RATE = 16000
SYNCNET_IMAGE_SIZE = 224
SYNCNET_WINDOW_FRAMES = 5  # video frames per lip window (0.2 s)
SYNCNET_MFCC_PER_FRAME = 4  # 100 Hz MFCC frames per 25 fps video frame
SYNCNET_MFCC_WINDOW = 20  # MFCC frames per audio window (0.2 s)
SYNCNET_EMBEDDING_DIM = 1024


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
    signal = audio_array(audio).astype(np.float64) * 32768.0
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
        frames = uint8_tensor(frames, "[T, H, W, 3]", 4, "frames")
        windows = frames.shape[0] - SYNCNET_WINDOW_FRAMES + 1
        if windows < 1:
            raise ValueError(f"SyncNet needs at least {SYNCNET_WINDOW_FRAMES} frames, got {frames.shape[0]}.")
        embeddings = []
        for start in range(0, windows, batch_size):
            count = min(batch_size, windows - start)
            clip = frames[start : start + count + SYNCNET_WINDOW_FRAMES - 1].to(self.device)
            clip = resize_square(clip.permute(0, 3, 1, 2).float(), SYNCNET_IMAGE_SIZE)  # [F, 3, 224, 224]
            clip = clip.flip(1).permute(1, 0, 2, 3)  # BGR, as OpenCV reads frames: [3, F, 224, 224]
            batch = torch.stack([clip[:, i : i + SYNCNET_WINDOW_FRAMES] for i in range(count)])
            embeddings.append(self.model.forward_lips(batch))  # batch: [B, 3, 5, 224, 224]
        return torch.cat(embeddings).cpu()

    def sync_scores(
        self, frames: np.ndarray | torch.Tensor, audio: np.ndarray, max_offset: int = 15, batch_size: int = 20
    ) -> dict[str, float | int]:
        """Offset (video frames), Sync-C and Sync-D of a talking-face clip (see :func:`score_sync`)."""
        frames = uint8_tensor(frames, "[T, H, W, 3]", 4, "frames")
        audio = audio_array(audio)
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
    file = weights_file(
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
