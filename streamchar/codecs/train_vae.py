"""Training the video autoencoder on a corpus (``streamchar train vae``).

Frames are sampled once into an in-memory pool (``frames_per_clip`` from each training clip);
batches are random crops aligned to the codec's spatial factor (convolutions generalise from
crops to whole frames, and a 64x64 crop costs a quarter of a 128x128 frame), with horizontal
flips. The loss is L1 + MSE on pixels in [-1, 1] (plus a small KL term for the KL codecs).
Held-out identities (the corpus's ``test`` split) are scored by PSNR on whole frames. The run
is resumable: re-running with the same ``--out`` continues from the newest checkpoint. At the
end, the per-channel latent mean and std are measured on training frames and the codec is
written to ``OUT/codec``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from streamchar.codecs.base import frames_to_tensor
from streamchar.codecs.video import DiffusersVideoCodec, build_video_codec
from streamchar.config import StreamCharConfig, to_dict
from streamchar.data.shards import Corpus, CorpusError
from streamchar.training import (
    guard_run_config,
    resolve_mixed_precision,
    resume_latest,
    save_checkpoint,
    schedule_lr,
)

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
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    tcfg, vcfg = cfg.train.vae, cfg.video_codec
    if vcfg.kind == "wan":
        raise ValueError(
            "streamchar train vae trains the per-frame codecs (tiny, kl); the Wan VAE loads from a local checkpoint."
        )
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    out = Path(out)
    guard_run_config(out, "video_codec", to_dict(vcfg))
    (out / "train_vae.json").write_text(json.dumps(to_dict(tcfg), indent=1, sort_keys=True) + "\n")

    precision = resolve_mixed_precision(tcfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=tcfg.grad_accum)
    torch.manual_seed(tcfg.seed + accelerator.process_index)
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
        vcfg.kind, params / 1e6, codec.spatial_factor, precision,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(codec.model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    state = resume_latest(out, codec.model, optimizer)
    start = state["step"] if state else 0
    generator = torch.Generator().manual_seed(tcfg.seed * 1000 + accelerator.process_index)
    if state and "sampler" in state:
        generator.set_state(torch.tensor(state["sampler"], dtype=torch.uint8))
    model, optimizer = accelerator.prepare(codec.model, optimizer)
    codec.model = model

    writer = SummaryWriter(str(out / "logs")) if accelerator.is_main_process else None
    stop = tcfg.steps if max_steps is None else min(tcfg.steps, start + max_steps)
    bar = tqdm(
        total=tcfg.steps,
        initial=start,
        desc="train vae",
        unit="step",
        disable=not accelerator.is_main_process,
    )
    best = {"psnr": None, "step": None}
    t_log, step = time.perf_counter(), start
    running = 0.0

    def checkpoint(step: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(out, step, accelerator.unwrap_model(model), optimizer,
                            state={"sampler": generator.get_state().tolist(), "best": best})  # fmt: skip

    for step in range(start, stop):
        schedule_lr(optimizer, step, tcfg)
        images = _random_crops(pool, tcfg.batch_size, tcfg.crop_size, codec.spatial_factor, generator)
        x = frames_to_tensor(images, accelerator.device).contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(model), accelerator.autocast():
            unwrapped = accelerator.unwrap_model(model)
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
            accelerator.backward(loss)
            if accelerator.sync_gradients and tcfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        running += mse.item()
        bar.update(1)
        done = step + 1
        if done % tcfg.log_every == 0 and writer is not None:
            avg_mse = running / tcfg.log_every
            train_psnr = 10 * math.log10(4.0 / max(avg_mse, 1e-12))  # pixels span 2 in [-1, 1]
            rate = tcfg.log_every / (time.perf_counter() - t_log)
            writer.add_scalar("train/loss", loss.item(), done)
            writer.add_scalar("train/psnr", train_psnr, done)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], done)
            bar.set_postfix(
                psnr=f"{train_psnr:.2f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}", it_s=f"{rate:.2f}"
            )
            running, t_log = 0.0, time.perf_counter()
        if done % tcfg.eval_every == 0 and accelerator.is_main_process:
            score = evaluate_psnr(codec, heldout)
            writer.add_scalar("eval/psnr_heldout", score, done)
            logger.info("step %d: held-out PSNR %.2f dB", done, score)
            if best["psnr"] is None or score > best["psnr"]:
                best = {"psnr": score, "step": done}
        if done % tcfg.ckpt_every == 0:
            checkpoint(done)
    bar.close()
    final_step = stop if stop > start else start
    if final_step > start:
        checkpoint(final_step)

    summary: dict = {"step": final_step, "total_steps": tcfg.steps, "parameters": params, "run": str(out)}
    if accelerator.is_main_process:
        heldout_psnr = evaluate_psnr(codec, heldout)
        summary["heldout_psnr_db"] = round(heldout_psnr, 3)
        summary["heldout_split"] = heldout_split
        summary["heldout_frames"] = int(len(heldout))
        mean, std = measure_latent_stats(
            codec, pool[torch.randperm(len(pool), generator=generator)[:2048]].numpy()
        )
        codec.model = accelerator.unwrap_model(model)
        codec.set_normalisation(mean, std)
        codec.save(out / "codec")
        summary["codec"] = str(out / "codec")
        summary["latent_mean"] = [round(v, 4) for v in mean.tolist()]
        summary["latent_std"] = [round(v, 4) for v in std.tolist()]
        summary["finished"] = final_step >= tcfg.steps
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if writer is not None:
            writer.close()
    return summary
