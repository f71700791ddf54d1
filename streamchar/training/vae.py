"""Training the video autoencoder on a corpus (``streamchar train vae``).

Frames are sampled once into an in-memory pool (``frames_per_clip`` from each training clip);
batches are random crops aligned to the codec's spatial factor (convolutions generalise from
crops to whole frames, and a 64x64 crop costs a quarter of a 128x128 frame), with horizontal
flips. The loss is L1 + MSE on pixels in [-1, 1] (plus a small KL term for the KL codecs).
Held-out identities (the corpus's ``test`` split) are scored by PSNR on whole frames. The run
is resumable: re-running with the same ``--out`` continues from the newest checkpoint. At the
end, the per-channel latent mean and std are measured on training frames and the codec is
written to ``OUT/codec``. It runs on :func:`~streamchar.training.loop.run_loop`; its batches come from one
random stream per process, kept in each checkpoint (``sampler``), and ``train.vae.grad_accum`` accumulates
over that many loop steps (accelerate's gradient accumulation).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from streamchar.codecs.base import frames_to_tensor
from streamchar.codecs.video import DiffusersVideoCodec, build_video_codec
from streamchar.config import StreamCharConfig, to_dict
from streamchar.data.shards import Corpus, CorpusError
from streamchar.training.loop import LoopSpec, TrainingRun, run_loop

logger = logging.getLogger(__name__)


def sample_frame_pool(
    corpus: Corpus, split: str, per_clip: int, seed: int, max_frames: int | None = None
) -> np.ndarray:
    """``per_clip`` frames from every clip of ``split``, uint8 ``[N, H, W, 3]``."""
    from tqdm.auto import tqdm

    entries = corpus.entries(split)
    if not entries:
        raise CorpusError(
            f"The corpus has no '{split}' clips; synthesise more characters or change the split."
        )
    rng = np.random.default_rng(seed)
    frames = []
    for entry in tqdm(entries, desc=f"loading {split} frames", unit="clip", leave=False):
        clip_frames = corpus.reader(entry["shard"]).frames(entry["key"])
        take = min(per_clip, len(clip_frames))
        idx = np.sort(rng.choice(len(clip_frames), size=take, replace=False))
        frames.append(clip_frames[idx])
        if max_frames is not None and sum(len(f) for f in frames) >= max_frames:
            break
    pool = np.concatenate(frames)
    return pool[:max_frames] if max_frames is not None else pool


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """PSNR in dB of uint8 images (over the whole batch)."""
    mse = (reference.float() - estimate.float()).pow(2).mean().item()
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def evaluate_psnr(codec: DiffusersVideoCodec, frames: np.ndarray, batch: int = 64) -> float:
    """PSNR of encode -> decode on whole frames (the codec's public, normalised path)."""
    recon = []
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        recon.append(codec.decode(codec.encode(chunk)).cpu())
    return psnr(torch.from_numpy(frames), torch.cat(recon))


@torch.no_grad()
def measure_latent_stats(
    codec: DiffusersVideoCodec, frames: np.ndarray, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of raw latents over ``frames``."""
    total = total_sq = None
    count = 0
    for start in range(0, len(frames), batch):
        x = frames_to_tensor(frames[start : start + batch], codec.device)
        z = codec.encode_images(x).double()  # [B, C, h, w]
        s = z.sum(dim=(0, 2, 3))
        sq = (z * z).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += z.shape[0] * z.shape[2] * z.shape[3]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def _random_crops(
    pool: torch.Tensor, batch: int, crop: int, align: int, generator: torch.Generator
) -> torch.Tensor:
    """``batch`` random aligned crops (with random flips) from uint8 ``pool [N, H, W, 3]``."""
    n, h, w, _ = pool.shape
    idx = torch.randint(0, n, (batch,), generator=generator)
    if crop <= 0 or crop >= h:
        images = pool[idx]
    else:
        ys = torch.randint(0, (h - crop) // align + 1, (batch,), generator=generator) * align
        xs = torch.randint(0, (w - crop) // align + 1, (batch,), generator=generator) * align
        images = torch.stack(
            [pool[i, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs, strict=True)]
        )
    flips = torch.rand(batch, generator=generator) < 0.5
    images = torch.where(flips[:, None, None, None], images.flip(2), images)
    return images


def train_vae(cfg: StreamCharConfig, data: str | Path, out: str | Path, max_steps: int | None = None) -> dict:
    """Train (or resume training) the video codec; returns a summary with held-out PSNR."""
    tcfg, vcfg = cfg.train.vae, cfg.video_codec
    if vcfg.kind == "wan":
        raise ValueError(
            "streamchar train vae trains the per-frame codecs (tiny, kl); the Wan VAE loads from a local checkpoint."
        )
    # the codec trains wherever accelerate puts it (cpu=False: MPS included)
    options = {"cpu": False, "gradient_accumulation_steps": tcfg.grad_accum}
    run = TrainingRun(LoopSpec("vae", None, tcfg, Path(out), to_dict(vcfg), record_name="video_codec",
                               settings_name="train_vae", log_figures=_with_psnr, curve=False,
                               accelerator_options=options))  # fmt: skip
    torch.manual_seed(tcfg.seed + run.rank)
    corpus = Corpus(data)
    if corpus.manifest.get("image_size") != vcfg.image_size:
        raise CorpusError(
            f"The corpus holds {corpus.manifest.get('image_size')}px frames but video_codec.image_size is "
            f"{vcfg.image_size}; re-synthesise or prepare the corpus at that size."
        )
    pool = torch.from_numpy(sample_frame_pool(corpus, "train", tcfg.frames_per_clip, tcfg.seed))
    heldout_split = "test" if corpus.entries("test") else "train"
    if heldout_split == "train":
        logger.warning("the corpus has no held-out identities; evaluating on training identities")
    per_clip = max(1, math.ceil(tcfg.eval_frames / max(1, len(corpus.entries(heldout_split)))))
    heldout = sample_frame_pool(corpus, heldout_split, per_clip, tcfg.seed + 1, max_frames=tcfg.eval_frames)
    logger.info("training pool: %d frames; held-out (%s): %d frames", len(pool), heldout_split, len(heldout))

    codec = build_video_codec(vcfg.kind, vcfg.image_size, vcfg.latent_channels, vcfg.arch)
    codec.model.to(memory_format=torch.channels_last)  # oneDNN convolutions: ~5x faster on CPU (measured)
    params = sum(p.numel() for p in codec.model.parameters())
    logger.info(
        "%s codec: %.2fM parameters, spatial factor %d, precision %s",
        vcfg.kind, params / 1e6, codec.spatial_factor, run.precision,
    )  # fmt: skip
    run.setup({"model": codec.model}, {"model": {"lr": tcfg.lr, "weight_decay": tcfg.weight_decay}})
    codec.model = run.models["model"]
    generator = torch.Generator().manual_seed(tcfg.seed * 1000 + run.rank)
    if run.state and "sampler" in run.state:
        generator.set_state(torch.tensor(run.state["sampler"], dtype=torch.uint8))
    best, done = {"psnr": None, "step": None}, run.start

    def train_step(step: int, _: torch.Generator):
        nonlocal done
        images = _random_crops(pool, tcfg.batch_size, tcfg.crop_size, codec.spatial_factor, generator)
        x = frames_to_tensor(images, run.device).contiguous(memory_format=torch.channels_last)
        model, acc = run.models["model"], run.accelerator
        with acc.accumulate(model), acc.autocast():
            unwrapped = acc.unwrap_model(model)
            if vcfg.kind == "kl":
                posterior = unwrapped.encode(x).latent_dist
                recon = unwrapped.decode(posterior.sample()).sample
                kl = posterior.kl().mean() / x[0].numel()
            else:
                recon = unwrapped.decode(unwrapped.encode(x).latents).sample
                kl = torch.zeros((), device=x.device)
            recon = recon.float()
            l1 = (recon - x).abs().mean()
            mse = (recon - x).pow(2).mean()
            loss = tcfg.l1_weight * l1 + tcfg.mse_weight * mse + tcfg.kl_weight * kl
            acc.backward(loss)
        run.update("model", run.lr(step))  # under accumulation, only a step's last micro-batch steps
        done = step + 1
        return loss, {"mse": mse.item()}

    def held_out(model, autocast) -> dict:
        nonlocal best
        score = evaluate_psnr(codec, heldout)
        if best["psnr"] is None or score > best["psnr"]:
            best = {"psnr": score, "step": done}
        return {"psnr_heldout": score}

    def finish(run: TrainingRun, summary: dict) -> dict:
        """Measure the latent statistics, write the codec to ``OUT/codec``, and summarise."""
        summary = {k: summary[k] for k in ("step", "total_steps", "parameters", "run")}
        if run.is_main:
            summary["heldout_psnr_db"] = round(evaluate_psnr(codec, heldout), 3)
            summary["heldout_split"] = heldout_split
            summary["heldout_frames"] = int(len(heldout))
            mean, std = measure_latent_stats(
                codec, pool[torch.randperm(len(pool), generator=generator)[:2048]].numpy()
            )
            codec.model = run.accelerator.unwrap_model(run.models["model"])
            codec.set_normalisation(mean, std)
            codec.save(run.out / "codec")
            summary["codec"] = str(run.out / "codec")
            summary["latent_mean"] = [round(v, 4) for v in mean.tolist()]
            summary["latent_std"] = [round(v, 4) for v in std.tolist()]
            summary["finished"] = summary["step"] >= tcfg.steps
        return summary

    def state() -> dict:
        return {"sampler": generator.get_state().tolist(), "best": best}

    run.spec.finish = finish
    return run_loop(run, train_step, held_out, max_steps, state=state)


def _with_psnr(means: dict[str, float]) -> dict[str, float]:
    """The logged training figures with the PSNR of their mean squared error (pixels span 2 in [-1, 1])."""
    return {**means, "psnr": 10 * math.log10(4.0 / max(means["mse"], 1e-12))}
