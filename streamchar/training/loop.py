"""One training loop for trainers that minimise a loss over batches: accelerate, exact resume, EMA, logging,
curves and checkpoints. A trainer brings only its objective and its data.

    summary = run_loop(spec, model, batch_at, loss_of, evaluate)

``batch_at(step, rank, world)`` returns this process's batch of optimiser step ``step`` (a pure function of
its arguments, so a resumed run sees exactly the batches an uninterrupted one would); ``loss_of(model,
batch, generator)`` returns the loss and a dict of floats to log; ``evaluate(ema)`` returns the held-out
figures that go into ``curve.json`` / ``curve.png``. The run folder holds ``checkpoints/`` (model, EMA,
optimiser, step, RNG; atomic safetensors), ``logs/`` (tensorboard), ``SPEC.json`` (the architecture record:
resuming with another is refused), ``curve.json``, ``curve.png`` and ``summary.json`` (``finished`` when the
last step is done); the EMA weights are exported with ``export`` when the run finishes.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamchar.training import (
    check_finite_loss,
    guard_run_config,
    read_optimizer_state,
    resolve_mixed_precision,
    resume_latest,
    save_checkpoint,
    schedule_lr,
)

logger = logging.getLogger(__name__)


@dataclass
class LoopSpec:
    """What the loop needs besides the model and the callables.

    Attributes:
        name: the run's name in logs and plots (``prior-audio``).
        section: the config section of the settings (``train.prior_audio``), named in errors.
        settings: that section: ``steps``, ``lr``, ``lr_min``, ``warmup_steps``, ``weight_decay``,
            ``grad_clip``, ``ema_decay``, ``mixed_precision``, ``log_every``, ``eval_every``, ``ckpt_every``,
            ``seed``, ``num_threads``.
        out: the run folder.
        record: the architecture record (``record_name``.json); a resumed run must match it.
        export: called with the EMA model and the folder ``out/final`` when the run finishes.
        curve_keys: the ``evaluate`` keys plotted in ``curve.png``.
    """

    name: str
    section: str
    settings: Any
    out: Path
    record: dict
    record_name: str = "model"
    export: Callable[[torch.nn.Module, Path], None] | None = None
    curve_keys: tuple[str, ...] = ()
    summary: dict = field(default_factory=dict)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up over the first steps, so early averages are not dominated by the init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def run_loop(
    spec: LoopSpec,
    model: torch.nn.Module,
    batch_at: Callable[[int, int, int], dict],
    loss_of: Callable[[torch.nn.Module, dict, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    evaluate: Callable[[torch.nn.Module, Callable], dict[str, float]],
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) ``model``; returns the summary (also written to ``summary.json``)."""
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from streamchar.eval.plots import plot_curve

    cfg, out = spec.settings, Path(spec.out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    precision = resolve_mixed_precision(cfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        guard_run_config(out, spec.record_name, spec.record)
    accelerator.wait_for_everyone()

    params = sum(p.numel() for p in model.parameters())
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    state = resume_latest(out, model, None, ema)
    start = state["step"] if state else 0
    if state is None:
        logger.info(
            "%s: %.2fM parameters, %s precision, %d process(es)", spec.name, params / 1e6, precision, world
        )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99)
    )
    if state is not None and (optimizer_state := read_optimizer_state(state["checkpoint"])) is not None:
        optimizer.load_state_dict(optimizer_state)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)

    writer = SummaryWriter(str(out / "logs")) if accelerator.is_main_process else None
    curve_path = out / "curve.json"
    curve = [
        c for c in (json.loads(curve_path.read_text()) if curve_path.is_file() else []) if c["step"] <= start
    ]
    stop = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {spec.name}", unit="step",
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    running: dict[str, float] = {}
    t_log, counted = time.perf_counter(), 0

    def checkpoint(step: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(out, step, accelerator.unwrap_model(model), optimizer, ema)
        accelerator.wait_for_everyone()

    def run_eval(step: int) -> None:
        if not accelerator.is_main_process:
            return
        scores = evaluate(ema, accelerator.autocast)
        curve.append({"step": step, **{k: round(float(v), 5) for k, v in scores.items()}})
        curve_path.write_text(json.dumps(curve, indent=1) + "\n")
        keys = spec.curve_keys or tuple(scores)
        plot_curve(curve, out / "curve.png", f"{spec.name} held-out", keys=keys)
        for key, value in scores.items():
            writer.add_scalar(f"eval/{key}", value, step)
        logger.info("%s step %d: %s", spec.name, step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    model.train()
    for step in range(start, stop):
        lr = schedule_lr(optimizer, step, cfg)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        batch = to_device(batch_at(step, rank, world), accelerator.device)
        with accelerator.autocast():
            loss, parts = loss_of(model, batch, generator)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        check_finite_loss(loss, step, spec.section)
        update_ema(ema, accelerator.unwrap_model(model), ema_decay_at(step, cfg.ema_decay))
        for key, value in {"loss": loss.item(), **parts}.items():
            running[key] = running.get(key, 0.0) + float(value)
        counted += 1
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 and writer is not None:
            for key, value in running.items():
                writer.add_scalar(f"train/{key}", value / counted, done)
            writer.add_scalar("train/lr", lr, done)
            writer.add_scalar("train/steps_per_second", counted / (time.perf_counter() - t_log), done)
            bar.set_postfix(loss=f"{running['loss'] / counted:.4f}", lr=f"{lr:.1e}")
            running, counted, t_log = {}, 0, time.perf_counter()
        if done % cfg.ckpt_every == 0:
            checkpoint(done)
        if done % cfg.eval_every == 0:
            run_eval(done)
    bar.close()
    final_step = max(start, stop)
    if final_step > start and final_step % cfg.ckpt_every:
        checkpoint(final_step)
    if not curve or curve[-1]["step"] != final_step:
        run_eval(final_step)
    summary = {"step": final_step, "total_steps": cfg.steps, "parameters": params, "run": str(out),
               "precision": precision, "processes": world, **spec.summary}  # fmt: skip
    if accelerator.is_main_process:
        summary["heldout"] = curve[-1] if curve else None
        summary["finished"] = final_step >= cfg.steps
        if summary["finished"] and spec.export is not None:
            spec.export(ema, out / "final")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        writer.close()
    accelerator.wait_for_everyone()
    return summary
