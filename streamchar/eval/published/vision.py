"""Published image and video models: Inception-v3 (FID), I3D (FVD) and ArcFace (identity similarity)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from streamchar.eval.published.files import (
    PublishedModel,
    WeightsPath,
    load_torchscript,
    require_package,
    resize_square,
    uint8_tensor,
    weights_file,
)

logger = logging.getLogger(__name__)

I3D_IMAGE_SIZE = 224
ARCFACE_IMAGE_SIZE = 112


# -- Inception (FID) ----------------------------------------------------------------------------------


class InceptionFeatures(PublishedModel):
    """The 2048-d pool features of NVIDIA's TorchScript Inception-v3, the features FID is computed on.

    Frames go in as uint8 NCHW at their own size, as in stylegan2-ada-pytorch's metrics: the network
    converts and resizes them to 299 x 299 itself.
    """

    @torch.no_grad()
    def features(self, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Frames uint8 RGB ``[N, H, W, 3]`` -> features ``[N, 2048]`` (float32)."""
        frames = uint8_tensor(frames, "[N, H, W, 3]", 4, "frames")
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
    file = weights_file(path, "inception-2015-12-05.pt", "FID Inception weights", hint)
    model = load_torchscript(file, "FID Inception", hint, torch.device(device))
    logger.info("Loaded the FID Inception from %s", file)
    return InceptionFeatures(model, device)


# -- I3D (FVD) ----------------------------------------------------------------------------------------


class I3DFeatures(PublishedModel):
    """The 400-d logits of StyleGAN-V's TorchScript I3D (Kinetics-400), the features FVD is computed on.

    Videos are resized to 224 x 224 (bilinear) and scaled to [-1, 1] here, and the network is told not
    to do either itself (``rescale=False, resize=False``), as in the reference FVD preprocessing.
    """

    @torch.no_grad()
    def features(self, videos: np.ndarray | torch.Tensor, batch_size: int = 8) -> np.ndarray:
        """Videos uint8 RGB ``[N, T, H, W, 3]`` -> features ``[N, 400]`` (float32)."""
        videos = uint8_tensor(videos, "[N, T, H, W, 3]", 5, "videos")
        features = []
        for batch in videos.split(batch_size):
            count, length = batch.shape[:2]
            frames = batch.to(self.device).flatten(0, 1).permute(0, 3, 1, 2).float()  # [B * T, 3, H, W]
            frames = (resize_square(frames, I3D_IMAGE_SIZE) / 127.5 - 1.0).clamp(-1.0, 1.0)  # resize rounding
            clips = frames.unflatten(0, (count, length)).transpose(1, 2).contiguous()  # [B, 3, T, 224, 224]
            features.append(self.model(clips, rescale=False, resize=False, return_features=True))
        return torch.cat(features).float().cpu().numpy()


def load_i3d(path: WeightsPath, device: str | torch.device = "cpu") -> I3DFeatures:
    """The FVD I3D from ``i3d_torchscript.pt`` (the file itself, or a directory holding it)."""
    hint = "pass the path of the TorchScript I3D that StyleGAN-V uses for FVD (i3d_torchscript.pt)"
    file = weights_file(path, "i3d_torchscript.pt", "FVD I3D weights", hint)
    model = load_torchscript(file, "FVD I3D", hint, torch.device(device))
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
        faces = uint8_tensor(faces, "[N, H, W, 3]", 4, "faces")
        pixels = resize_square(faces.to(self.device).permute(0, 3, 1, 2).float(), self.image_size)
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
    file = weights_file(
        path,
        "w600k_r50.onnx",
        "ArcFace ONNX model",
        "pass the path of an InsightFace ArcFace recognition model in ONNX format "
        "(e.g. w600k_r50.onnx from the buffalo_l pack)",
    )
    onnxruntime = require_package(
        "onnxruntime", "ArcFace", "pip install onnxruntime (or onnxruntime-gpu to run it on CUDA)"
    )
    target = torch.device(device)
    providers: list[Any] = ["CPUExecutionProvider"]
    if target.type == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": target.index or 0}))
    session = onnxruntime.InferenceSession(str(file), providers=providers)
    logger.info("Loaded ArcFace from %s", file)
    return ArcFaceEmbedder(session, device)
