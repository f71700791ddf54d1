"""``streamchar train teacher``: flow-matching training of the joint DiT on a latent cache.

accelerate runs it on one process, or under ``accelerate launch`` with DDP or FSDP. Data and
randomness are deterministic functions of (seed, step, process): window ``i`` of step ``s`` on process
``r`` is item ``(s * world + r) * batch + i`` of the :class:`WindowDataset`, and the step's draws come
from a generator seeded with ``(seed, s, r)``. So a resumed run continues exactly where the killed
one stopped, with the same optimiser and EMA state.

The run folder holds ``checkpoints/`` (model, EMA, optimiser, step, RNG; atomic safetensors),
``logs/`` (tensorboard), ``denoiser.json`` (the architecture it was started with; resuming with
another is refused), ``curve.json`` (held-out losses per evaluation) and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from pathlib import Path

import torch

from streamchar.config import StreamCharConfig, resolve_asset_path, to_dict
from streamchar.data.latents import LatentCache, WindowDataset
from streamchar.denoiser.build import LatentSpec, build_denoiser
from streamchar.denoiser.dit import JointDiT, count_parameters
from streamchar.denoiser.flow import FlowMatching
from streamchar.denoiser.objective import TeacherObjective
from streamchar.eval.plots import plot_curve
from streamchar.loaders import load_priors
from streamchar.training import (
    check_finite_loss,
    guard_run_config,
    read_optimizer_state,
    resolve_mixed_precision,
    resume_latest,
    save_checkpoint,
    schedule_lr,
)
from streamchar.training.distributed import (
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    shard_module,
)

logger = logging.getLogger(__name__)


def latent_spec_from_cache(cache: LatentCache) -> LatentSpec:
    """Latent sizes as the cache's codecs made them."""
    from streamchar.data.phonemes import F0Buckets, num_units

    video = cache.manifest["codecs"]["video"]
    buckets = cache.manifest.get("f0_buckets", {})
    return LatentSpec(
        latent_channels=int(video["latent_channels"]),
        latent_size=int(video["image_size"]) // int(video["spatial_factor"]),
        audio_dim=int(cache.manifest["codecs"]["audio"]["latent_dim"]),
        num_units=num_units(F0Buckets(**buckets) if buckets else F0Buckets()),
    )


def objective_from_config(tcfg, residual: bool = True) -> TeacherObjective:
    """The teacher objective of a ``train.teacher`` section (``max_t`` applies to a residual denoiser only)."""
    return TeacherObjective(
        flow=FlowMatching(tcfg.logit_mean, tcfg.logit_std, tcfg.shift, tcfg.max_t if residual else 1.0),
        cond_drop=tcfg.cond_drop,
        ref_image_drop=tcfg.ref_image_drop,
        ref_voice_drop=tcfg.ref_voice_drop,
        audio_driven_fraction=tcfg.audio_driven_fraction,
        audio_driven_cond_drop=tcfg.audio_driven_cond_drop,
        audio_loss_weight=tcfg.audio_loss_weight,
        mouth_weight=tcfg.mouth_weight,
    )


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up over the first steps, so early averages are not dominated by the init."""
    return min(decay, (1 + step) / (10 + step))


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _gradient_sync(model: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step (DDP ``no_sync``; FSDP2's
    ``set_requires_gradient_sync``); a no-op on one process."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):

        @contextlib.contextmanager
        def paused():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return paused()
    return contextlib.nullcontext()


def collate(items: list[dict]) -> dict:
    return torch.utils.data.default_collate(items)


@torch.no_grad()
def evaluate(
    model: JointDiT,
    objective: TeacherObjective,
    windows: list[dict],
    seed: int,
    device,
    autocast,
    priors=None,
) -> dict[str, float]:
    """Held-out loss with fixed windows and fixed draws, in both modes, without guidance dropout."""
    was_training = model.training
    model.eval()
    plain = TeacherObjective(flow=objective.flow, cond_drop=0.0, ref_image_drop=0.0, ref_voice_drop=0.0,
                             audio_driven_fraction=0.0, audio_loss_weight=objective.audio_loss_weight)  # fmt: skip
    totals = {"video": 0.0, "audio": 0.0, "video_audio_driven": 0.0}
    for i in range(0, len(windows), 8):
        batch = _to(collate(windows[i : i + 8]), device)
        draws = plain.draw(batch, torch.Generator().manual_seed(seed + i))
        with autocast():
            _, joint = plain.loss(model, batch, draws, priors)
            driven_draws = dict(draws, audio_driven=torch.ones_like(draws["audio_driven"]))
            _, driven = plain.loss(model, batch, driven_draws, priors)
        totals["video"] += joint["video"].sum().item()
        totals["audio"] += joint["audio"].sum().item()
        totals["video_audio_driven"] += driven["video"].sum().item()
    model.train(was_training)
    return {k: v / len(windows) for k, v in totals.items()}


def train_teacher(
    cfg: StreamCharConfig,
    latents: str | Path,
    out: str | Path,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the teacher; returns a summary. ``max_steps`` stops early (for sessions)."""
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    tcfg = cfg.train.teacher
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    out = Path(out)
    cache = LatentCache(latents)
    timeline = cache.window_timeline(cfg.timeline)  # window sizes from the config, rates from the cache
    spec = latent_spec_from_cache(cache)
    precision = resolve_mixed_precision(tcfg.mixed_precision)
    # cpu=True without CUDA: several CPU processes (accelerate launch) then form a gloo group (MULTI_CPU)
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    sharded = tcfg.fsdp and world > 1
    if accelerator.is_main_process:
        guard_run_config(
            out, "denoiser", {**to_dict(cfg.denoiser), **spec.__dict__, "timeline": to_dict(timeline)}
        )
        (out / "train_teacher.json").write_text(json.dumps(to_dict(tcfg), indent=1, sort_keys=True) + "\n")
    accelerator.wait_for_everyone()

    torch.manual_seed(tcfg.seed)  # the same initial weights on every process
    model = build_denoiser(cfg.denoiser, timeline, spec)
    priors = load_priors(cfg, accelerator.device) if model.residual else None
    unit_context = priors.context if priors is not None else 0
    params = count_parameters(model)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    state = resume_latest(out, model, None, ema)  # whole weights, before any sharding
    start = state["step"] if state else 0
    if state is None:
        logger.info("teacher: %.2fM parameters, %s precision, %d process(es)%s", params / 1e6, precision, world,
                    ", FSDP" if sharded else "")  # fmt: skip
    if sharded:  # FSDP2: every block and the root sharded across processes; the EMA sharded alike
        model.to(accelerator.device)
        ema.to(accelerator.device)
        shard_module(model, model.blocks)
        shard_module(ema, ema.blocks)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.99)
    )
    if state is not None and (optimizer_state := read_optimizer_state(state["checkpoint"])) is not None:
        load_full_optimizer_state(optimizer, optimizer_state)
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)  # DDP across processes
        ema.to(accelerator.device)
    objective = objective_from_config(tcfg, accelerator.unwrap_model(model).residual)

    train_set = WindowDataset(
        cache,
        "train",
        length=2**31 - 1,
        seed=tcfg.seed,
        first_chunk_prob=tcfg.first_chunk_prob,
        timeline=timeline,
        unit_context=unit_context,
    )
    heldout_split = "test" if cache.entries("test") else "train"
    heldout = WindowDataset(cache, heldout_split, length=tcfg.eval_windows, seed=tcfg.seed + 7919,
                            first_chunk_prob=tcfg.first_chunk_prob, timeline=timeline,
                            unit_context=unit_context)  # fmt: skip
    evaluating = accelerator.is_main_process or sharded  # a sharded EMA needs every process to run forward
    heldout_windows = [heldout[i] for i in range(len(heldout))] if evaluating else []

    def batches(step: int):
        """The micro-batches of one optimiser step on this process. Window indices are laid out so that
        micro-batch ``m`` of all processes together is micro-batch ``m`` of one process with the whole batch."""
        b, accum = tcfg.batch_size, tcfg.grad_accum
        for m in range(accum):
            first = (step * accum + m) * world * b + rank * b
            yield collate([train_set[i] for i in range(first, first + b)])

    writer = SummaryWriter(str(out / "logs")) if accelerator.is_main_process else None
    curve_path = out / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    curve = [c for c in curve if c["step"] <= start]
    stop = tcfg.steps if max_steps is None else min(tcfg.steps, start + max_steps)
    bar = tqdm(total=tcfg.steps, initial=start, desc="train teacher", unit="step",
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    t_log, running, windows_seen = time.perf_counter(), {"video": 0.0, "audio": 0.0, "n": 0}, 0

    def checkpoint(step: int) -> None:
        # gathering sharded tensors is a collective: every process takes part, the main one writes
        weights, ema_weights = full_state_dict(accelerator.unwrap_model(model)), full_state_dict(ema)
        optimizer_state = full_optimizer_state(optimizer)
        if accelerator.is_main_process:
            save_checkpoint(out, step, weights, optimizer_state, ema_weights, state={"windows": windows_seen})
        accelerator.wait_for_everyone()

    def run_eval(step: int) -> dict:
        scores = evaluate(
            ema, objective, heldout_windows, tcfg.seed, accelerator.device, accelerator.autocast, priors
        )
        curve.append({"step": step, **{k: round(v, 5) for k, v in scores.items()}})
        if not accelerator.is_main_process:
            return scores
        curve_path.write_text(json.dumps(curve, indent=1) + "\n")
        plot_curve(curve, out / "curve.png", f"teacher held-out loss ({heldout_split} split)")
        for name, value in scores.items():
            writer.add_scalar(f"eval/{name}", value, step)
        logger.info("step %d: held-out video %.4f, audio %.4f, video given audio %.4f", step,
                    scores["video"], scores["audio"], scores["video_audio_driven"])  # fmt: skip
        return scores

    model.train()
    for step in range(start, stop):
        lr = schedule_lr(optimizer, step, tcfg)
        generator = torch.Generator().manual_seed(tcfg.seed * 1_000_003 + step)  # the same on every process
        micro_batches = list(batches(step))
        for i, batch in enumerate(micro_batches):
            batch = _to(batch, accelerator.device)
            last = i == len(micro_batches) - 1
            with _gradient_sync(model, last):
                draws = objective.draw(
                    batch, generator, total=tcfg.batch_size * world, offset=rank * tcfg.batch_size
                )
                with accelerator.autocast():
                    loss, parts = objective.loss(model, batch, draws, priors)
                accelerator.backward(loss / len(micro_batches))
            running["video"] += parts["video"].mean().item()
            running["audio"] += parts["audio"][~parts["audio_driven"]].mean().nan_to_num().item()
            running["n"] += 1
            windows_seen += batch["video"].shape[0] * world
        if tcfg.grad_clip > 0:  # accelerate's clip unscales fp16 gradients first
            clip = torch.nn.utils.clip_grad_norm_ if sharded else accelerator.clip_grad_norm_
            clip(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        check_finite_loss(loss, step, "train.teacher")
        update_ema(ema, accelerator.unwrap_model(model), ema_decay_at(step, tcfg.ema_decay))
        done = step + 1
        bar.update(1)
        if done % tcfg.log_every == 0 and writer is not None:
            rate = tcfg.log_every / (time.perf_counter() - t_log)
            n = max(1, running["n"])
            writer.add_scalar("train/loss_video", running["video"] / n, done)
            writer.add_scalar("train/loss_audio", running["audio"] / n, done)
            writer.add_scalar("train/lr", lr, done)
            writer.add_scalar("train/steps_per_second", rate, done)
            bar.set_postfix(
                video=f"{running['video'] / n:.4f}", audio=f"{running['audio'] / n:.4f}", lr=f"{lr:.1e}"
            )
            running, t_log = {"video": 0.0, "audio": 0.0, "n": 0}, time.perf_counter()
        if done % tcfg.ckpt_every == 0:
            checkpoint(done)
        if done % tcfg.eval_every == 0 and evaluating:
            run_eval(done)
    bar.close()
    final_step = max(start, stop)
    if final_step > start and final_step % tcfg.ckpt_every:
        checkpoint(final_step)
    summary: dict = {"step": final_step, "total_steps": tcfg.steps, "parameters": params, "run": str(out),
                     "precision": precision, "processes": world,
                     "strategy": "fsdp" if sharded else ("ddp" if world > 1 else "single")}  # fmt: skip
    if evaluating and (not curve or curve[-1]["step"] != final_step):
        run_eval(final_step)
    if accelerator.is_main_process:
        summary["heldout"] = curve[-1]
        summary["heldout_split"] = heldout_split
        summary["finished"] = final_step >= tcfg.steps
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        writer.close()
    accelerator.wait_for_everyone()
    return summary


def _check_trained_window(checkpoint: Path, cfg: StreamCharConfig) -> None:
    """Refuse a timeline whose window differs from training: positions would silently move."""
    from streamchar.training import CheckpointError

    for record in (checkpoint / "denoiser.json", checkpoint.parent.parent / "denoiser.json"):
        if record.is_file():
            trained = json.loads(record.read_text()).get("timeline")
            now = to_dict(cfg.timeline)
            changed = sorted(k for k in trained or {} if trained[k] != now.get(k))
            if changed:
                raise CheckpointError(
                    f"The teacher at {checkpoint} was trained with another window ({', '.join(changed)} differ); "
                    "sample with the timeline it was trained with."
                )
            return


def trained_denoiser_section(checkpoint: Path, cfg: StreamCharConfig):
    """The ``denoiser`` section a checkpoint was trained with (its ``denoiser.json``), so a model folder loads
    whatever the current config says; a record from before the priors is the plain formulation."""
    from dataclasses import fields

    from streamchar.config import DenoiserConfig

    for record in (checkpoint / "denoiser.json", checkpoint.parent.parent / "denoiser.json"):
        if record.is_file():
            trained = json.loads(record.read_text())
            names = {f.name for f in fields(DenoiserConfig)}
            values = {k: v for k, v in trained.items() if k in names}
            values.setdefault("formulation", "plain")
            values["attention"] = cfg.denoiser.attention  # a runtime choice, not part of the weights
            values["gradient_checkpointing"] = cfg.denoiser.gradient_checkpointing
            return DenoiserConfig(**values)
    return cfg.denoiser


def trained_max_t(run_or_checkpoint: str | Path) -> float:
    """The largest flow time a residual teacher was trained on (``train.teacher.max_t`` in the
    ``train_teacher.json`` of its folder or run); 1 when no record is found."""
    path = resolve_asset_path(run_or_checkpoint)
    for folder in (path, path.parent, path.parent.parent):
        record = folder / "train_teacher.json"
        if record.is_file():
            return float(json.loads(record.read_text()).get("max_t", 1.0))
    return 1.0


def load_teacher(
    run_or_checkpoint: str | Path, cfg: StreamCharConfig, spec: LatentSpec, use_ema: bool = True
) -> JointDiT:
    """The teacher from a run folder (newest checkpoint) or a checkpoint folder; EMA weights by default."""
    from safetensors.torch import load_file

    from streamchar.training import CheckpointError, list_checkpoints

    path = resolve_asset_path(run_or_checkpoint)  # checkpoints/tiny/teacher works from any directory
    if not (path / "model.safetensors").is_file():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(
                f"No teacher checkpoint in {path}; train one with `streamchar train teacher`."
            )
        path = found[-1]
    _check_trained_window(path, cfg)
    model = build_denoiser(trained_denoiser_section(path, cfg), cfg.timeline, spec)
    name = "ema.safetensors" if use_ema and (path / "ema.safetensors").is_file() else "model.safetensors"
    try:
        weights = load_file(str(path / name))
    except Exception as err:
        raise CheckpointError(
            f"Could not read {path / name} ({err}); the file is damaged, use another checkpoint."
        ) from err
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the configured denoiser ({len(missing)} missing, {len(unexpected)} unexpected tensors); "
            "pass the config it was trained with."
        )
    return model.eval()
