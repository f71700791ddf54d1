"""``streamchar train teacher``: flow-matching training of the joint DiT on a latent cache.

It runs on :func:`~streamchar.training.loop.run_loop`: one process, or ``accelerate launch`` with DDP or FSDP
(``train.teacher.fsdp``). Data and randomness are deterministic functions of (seed, step, process): window
``i`` of micro-batch ``m`` of step ``s`` on process ``r`` is item ``((s * accum + m) * world + r) * batch + i``
of the :class:`WindowDataset`, and the step's draws come from one generator seeded with ``(seed, s)`` of
which each process takes its slice. So a resumed run continues exactly where the killed one stopped, with
the same optimiser and EMA state, and several processes take the steps of one with the whole batch.

The run folder holds ``checkpoints/`` (model, EMA, optimiser, step, RNG; atomic safetensors),
``logs/`` (tensorboard), ``denoiser.json`` (the architecture it was started with; resuming with
another is refused), ``train_teacher.json``, ``curve.json`` (held-out losses per evaluation) and
``summary.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streamchar.config import StreamCharConfig, to_dict
from streamchar.data.latents import LatentCache
from streamchar.data.windows import WindowDataset
from streamchar.denoiser.build import LatentSpec, build_denoiser
from streamchar.denoiser.dit import JointDiT
from streamchar.denoiser.flow import FlowMatching
from streamchar.denoiser.objective import TeacherObjective
from streamchar.loaders import load_priors
from streamchar.training.loop import LoopSpec, TrainingRun, collate, gradient_sync, run_loop, to_device


def latent_spec_from_cache(cache: LatentCache) -> LatentSpec:
    """Latent sizes as the cache's codecs made them."""
    from streamchar.data.phonemes import num_units

    video = cache.manifest["codecs"]["video"]
    return LatentSpec(
        latent_channels=int(video["latent_channels"]),
        latent_size=int(video["image_size"]) // int(video["spatial_factor"]),
        audio_dim=int(cache.manifest["codecs"]["audio"]["latent_dim"]),
        num_units=num_units(cache.f0_buckets()),
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
        max_t_video=tcfg.max_t_video if residual else None,
        video_noise_share=tcfg.video_noise_share,
    )


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
        batch = to_device(collate(windows[i : i + 8]), device)
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


def start_from(model: JointDiT, init: str | Path, cfg: StreamCharConfig, spec: LatentSpec) -> None:
    """Load a trained teacher's weights (its EMA when it has one; ``train.teacher.init``) into ``model``."""
    from streamchar.checkpoints import CheckpointError
    from streamchar.loaders import load_teacher

    try:
        model.load_state_dict(load_teacher(init, cfg, spec).state_dict())
    except RuntimeError as err:
        raise CheckpointError(
            f"train.teacher.init: {init} is another denoiser than the one configured ({str(err)[:120]}...); "
            "pass the denoiser config it was trained with."
        ) from err


def train_teacher(
    cfg: StreamCharConfig,
    latents: str | Path,
    out: str | Path,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the teacher; returns a summary. ``max_steps`` stops early (for sessions)."""
    tcfg = cfg.train.teacher
    cache = LatentCache(latents)
    timeline = cache.window_timeline(cfg.timeline)  # window sizes from the config, rates from the cache
    spec = latent_spec_from_cache(cache)
    heldout_split = "test" if cache.entries("test") else "train"
    record = {**to_dict(cfg.denoiser), **spec.__dict__, "timeline": to_dict(timeline)}
    run = TrainingRun(LoopSpec("teacher", "train.teacher", tcfg, Path(out), record, record_name="denoiser",
                               settings_name="train_teacher", shared_draws=True, sharded=tcfg.fsdp,
                               curve_title=f"teacher held-out loss ({heldout_split} split)",
                               curve_keys=("video", "audio", "video_audio_driven")), progress)  # fmt: skip
    run.spec.summary.update(strategy=run.strategy, heldout_split=heldout_split)

    torch.manual_seed(tcfg.seed)  # the same initial weights on every process
    model = build_denoiser(cfg.denoiser, timeline, spec)
    if tcfg.init:
        start_from(model, tcfg.init, cfg, spec)
    priors = load_priors(cfg, run.device) if model.residual else None
    unit_context = priors.context if priors is not None else 0
    adamw = {"lr": tcfg.lr, "weight_decay": tcfg.weight_decay, "betas": (0.9, 0.99)}
    run.setup({"model": model}, {"model": adamw}, ema=True)
    objective = objective_from_config(tcfg, model.residual)

    train_set = WindowDataset(
        cache,
        "train",
        length=2**31 - 1,
        seed=tcfg.seed,
        first_chunk_prob=tcfg.first_chunk_prob,
        timeline=timeline,
        unit_context=unit_context,
    )
    heldout = WindowDataset(cache, heldout_split, length=tcfg.eval_windows, seed=tcfg.seed + 7919,
                            first_chunk_prob=tcfg.first_chunk_prob, timeline=timeline,
                            unit_context=unit_context)  # fmt: skip
    # a sharded EMA needs every process to run forward
    heldout_windows = [heldout[i] for i in range(len(heldout))] if run.is_main or run.sharded else []
    windows_seen = 0

    def batches(step: int):
        """The micro-batches of one optimiser step on this process. Window indices are laid out so that
        micro-batch ``m`` of all processes together is micro-batch ``m`` of one process with the whole batch."""
        b, accum = tcfg.batch_size, tcfg.grad_accum
        for m in range(accum):
            first = (step * accum + m) * run.world * b + run.rank * b
            yield collate([train_set[i] for i in range(first, first + b)])

    def train_step(step: int, generator: torch.Generator):
        nonlocal windows_seen
        micro_batches, b, figures = list(batches(step)), tcfg.batch_size, {"video": 0.0, "audio": 0.0}
        for i, batch in enumerate(micro_batches):
            batch = to_device(batch, run.device)
            with gradient_sync(run.models["model"], i == len(micro_batches) - 1):
                draws = objective.draw(batch, generator, total=b * run.world, offset=run.rank * b)
                with run.accelerator.autocast():
                    loss, parts = objective.loss(run.models["model"], batch, draws, priors)
                run.accelerator.backward(loss / len(micro_batches))
            figures["video"] += parts["video"].mean().item() / len(micro_batches)
            figures["audio"] += parts["audio"][~parts["audio_driven"]].mean().nan_to_num().item() / len(
                micro_batches
            )
            windows_seen += batch["video"].shape[0] * run.world
        run.update("model", run.lr(step))
        return loss, figures

    def held_out(ema, autocast) -> dict:
        return evaluate(ema, objective, heldout_windows, tcfg.seed, run.device, autocast, priors)

    return run_loop(run, train_step, held_out, max_steps, state=lambda: {"windows": windows_seen})
