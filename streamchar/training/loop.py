"""One training loop for every StreamChar trainer: accelerate, exact resume, EMA, logging, curves and
checkpoints. A trainer brings only its objective and its data.

    run = TrainingRun(spec)                                   # processes, the run folder's guard, settings
    run.setup({"model": model}, {"model": adamw_kwargs}, ema=True)   # resume, shard, optimisers
    summary = run_loop(run, train_step, evaluate)

``train_step(step, generator)`` runs optimiser step ``step`` on this process: its data (a pure function of
the step, the process and the run's seed, so a resumed run sees exactly the batches an uninterrupted one
would), forward and backward passes (:meth:`TrainingRun.backward`) and optimiser updates
(:meth:`TrainingRun.update`); it returns the loss and a dict of floats to log. :func:`objective_step` makes
one from a batch function and a loss for the common case. ``evaluate(model, autocast)`` returns the
held-out figures of the EMA model (the live one without EMA) that go into ``curve.json`` / ``curve.png``.

The run folder holds ``checkpoints/`` (models, EMA, optimisers, step, RNG; atomic safetensors, see
:mod:`streamchar.checkpoints`), ``logs/`` (tensorboard), the architecture record (``<record_name>.json``, e.g.
``denoiser.json``: resuming with another is refused), the settings it was started with
(``<settings_name>.json``, when the trainer names one), ``curve.json``, ``curve.png`` and ``summary.json``
(``finished`` when the last step is done).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from streamchar.checkpoints import guard_run_config, read_optimizer_state, resume_latest, save_checkpoint
from streamchar.config import to_dict
from streamchar.precision import resolve_mixed_precision
from streamchar.training import check_finite_loss, cosine_lr
from streamchar.training.curves import plot_curve
from streamchar.training.distributed import (
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    shard_module,
)

logger = logging.getLogger(__name__)

TrainStep = Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
Evaluate = Callable[[nn.Module, Callable], dict[str, float]]


@dataclass
class LoopSpec:
    """What the loop needs besides the models and the callables.

    Attributes:
        name: the run's name in logs and plots (``prior-audio``).
        section: the config section named when the loss is not finite (``train.prior_audio``); None: no check.
        settings: the trainer's settings: ``steps`` (unless ``steps`` is given), ``lr``, ``lr_min``,
            ``warmup_steps``, ``grad_clip``, ``ema_decay`` (with an EMA), ``mixed_precision``, ``log_every``,
            ``eval_every`` (with an ``evaluate``), ``ckpt_every``, ``seed``, ``num_threads``.
        out: the run folder.
        record: the architecture record (``record_name``.json); a resumed run must match it.
        settings_name: the settings are written to ``settings_name``.json when given (``train_teacher``).
        steps: the run's optimiser steps when the settings have no ``steps``.
        desc: the progress bar's label (``train NAME`` by default).
        shared_draws: one random stream for all processes (each takes its slice of the global batch's draws);
            otherwise each process has its own.
        sharded: FSDP2 when the run has several processes (each model's ``blocks`` and its root sharded).
        log_prefix: the tensorboard group of the training figures.
        log_figures: turns the logged means of an interval into the figures written (adds derived ones).
        curve: held-out figures go to ``curve.json`` / ``curve.png`` (and the summary's ``heldout``).
        curve_title, curve_keys, curve_ylabel: ``curve.png``'s title, plotted keys and y label.
        summary: fields added to the summary.
        finish: called on every process when the loop ends with the run and the summary; exports what the
            run made (:attr:`TrainingRun.final_model`) and returns the summary to write.
        accelerator_options: extra ``Accelerator`` arguments.
    """

    name: str
    section: str | None
    settings: Any
    out: Path
    record: dict
    record_name: str = "model"
    settings_name: str | None = None
    steps: int | None = None
    desc: str | None = None
    shared_draws: bool = False
    sharded: bool = False
    log_prefix: str = "train"
    log_figures: Callable[[dict[str, float]], dict[str, float]] | None = None
    curve: bool = True
    curve_title: str | None = None
    curve_keys: tuple[str, ...] = ()
    curve_ylabel: str = "held-out loss"
    summary: dict = field(default_factory=dict)
    finish: Callable[[TrainingRun, dict], dict] | None = None
    accelerator_options: dict = field(default_factory=dict)


# -- helpers trainers share ---------------------------------------------------------------------------
def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up over the first steps, so early averages are not dominated by the init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def collate(items: list[dict]) -> dict:
    return torch.utils.data.default_collate(items)


def gradient_sync(model: nn.Module, sync: bool):
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


# -- the run ------------------------------------------------------------------------------------------
class TrainingRun:
    """The processes, models, optimisers, EMA and checkpoints of one run folder."""

    def __init__(self, spec: LoopSpec, progress: bool = True) -> None:
        from accelerate import Accelerator

        self.spec, self.settings, self.out, self.progress = spec, spec.settings, Path(spec.out), progress
        if self.settings.num_threads:
            torch.set_num_threads(self.settings.num_threads)
        self.precision = resolve_mixed_precision(self.settings.mixed_precision)
        # cpu=True without CUDA: several CPU processes (accelerate launch) then form a gloo group (MULTI_CPU)
        options = {"cpu": not torch.cuda.is_available(), **spec.accelerator_options}
        self.accelerator = acc = Accelerator(mixed_precision=self.precision, **options)
        self.rank, self.world, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        self.sharded = spec.sharded and self.world > 1
        self.total = spec.steps if spec.steps is not None else self.settings.steps
        if self.is_main:
            guard_run_config(self.out, spec.record_name, spec.record)
            if spec.settings_name:
                text = json.dumps(to_dict(self.settings), indent=1, sort_keys=True) + "\n"
                (self.out / f"{spec.settings_name}.json").write_text(text)
        acc.wait_for_everyone()
        self.bare: dict[str, nn.Module] = {}  # the models as built (what checkpoints and the EMA read)
        self.models: dict[str, nn.Module] = {}  # as prepared (DDP) or sharded
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: nn.Module | None = None
        self.state: dict | None = None
        self.start, self.parameters = 0, 0
        self.last: dict[str, float] = {}  # the figures of the last step

    @property
    def device(self):
        return self.accelerator.device

    @property
    def strategy(self) -> str:
        return "fsdp" if self.sharded else ("ddp" if self.world > 1 else "single")

    def setup(self, models: dict[str, nn.Module], optimizers: dict[str, dict], ema: bool = False) -> None:
        """Put ``models`` in training mode, resume the newest checkpoint into them (one state dict; with
        several models, keys prefixed by their names) and the first model's EMA (``ema``), shard them on a
        sharded run, make each one's AdamW (``optimizers[name]``: its arguments; saved as ``optimizer`` for the
        first model, ``optimizer-NAME`` for the others) with its saved state, and prepare them."""
        acc, first = self.accelerator, next(iter(models.values()))
        for model in models.values():
            model.train()
        self.bare = dict(models)
        self.parameters = sum(p.numel() for m in models.values() for p in m.parameters())
        self.ema = copy.deepcopy(first).requires_grad_(False).eval() if ema else None
        self.state = resume_latest(self.out, self._weights_module(), None, self.ema)  # whole, before sharding
        self.start = self.state["step"] if self.state else 0
        if self.state is None:
            logger.info("%s: %.2fM parameters, %s precision, %d process(es)%s", self.spec.name, self.parameters / 1e6,
                        self.precision, self.world, ", FSDP" if self.sharded else "")  # fmt: skip
        if self.sharded:  # FSDP2: every block and the root sharded across processes; the EMA sharded alike
            for module in [*models.values(), *([self.ema] if ema else [])]:
                module.to(acc.device)
                shard_module(module, module.blocks)
        for i, (name, model) in enumerate(models.items()):
            optimizer = torch.optim.AdamW(model.parameters(), **optimizers[name])
            file = "optimizer" if i == 0 else f"optimizer-{name}"
            saved = read_optimizer_state(self.state["checkpoint"], file) if self.state is not None else None
            if saved is not None:
                load_full_optimizer_state(optimizer, saved)
            if not self.sharded:
                model, optimizer = acc.prepare(model, optimizer)  # DDP across processes
            self.models[name], self.optimizers[name] = model, optimizer
        if self.ema is not None and not self.sharded:
            self.ema.to(acc.device)

    @property
    def final_model(self) -> nn.Module:
        """What the run exports and evaluates: the EMA model, or the first model where there is none."""
        return (
            self.ema
            if self.ema is not None
            else self.accelerator.unwrap_model(self.models[next(iter(self.models))])
        )

    def _weights_module(self) -> nn.Module:
        return next(iter(self.bare.values())) if len(self.bare) == 1 else nn.ModuleDict(self.bare)

    def generator(self, step: int) -> torch.Generator:
        """The step's random stream: shared by all processes (``shared_draws``) or this process's own."""
        seed = self.settings.seed * 1_000_003 + step
        if not self.spec.shared_draws:  # seed * 1_000_003 + step * world + rank: one per (step, process)
            seed += step * (self.world - 1) + self.rank
        return torch.Generator().manual_seed(seed)

    def lr(self, step: int) -> float:
        """The settings' learning rate at ``step``: linear warm-up, then cosine decay to ``lr_min``."""
        s = self.settings
        return cosine_lr(step, self.total, s.lr, s.lr_min, s.warmup_steps)

    def backward(self, loss: torch.Tensor, name: str = "model", sync: bool = True) -> None:
        """Backpropagate ``loss`` through model ``name``; ``sync=False`` (a micro-batch before the step's last)
        keeps the gradients local under FSDP2. Under DDP the skip is decided in the forward pass, so only a
        forward run inside :func:`gradient_sync` too (as the teacher does) skips the all-reduce; otherwise
        each micro-batch is reduced (the same gradients, more communication)."""
        with gradient_sync(self.models[name], sync):
            self.accelerator.backward(loss)

    def update(self, name: str = "model", lr: float | None = None) -> None:
        """Clip, step and clear model ``name``'s optimiser at learning rate ``lr`` (None: the rate its
        parameter groups already have; trainers pass :meth:`lr` or their own schedule)."""
        model, optimizer = self.models[name], self.optimizers[name]
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        # accelerate's clip unscales fp16 gradients first; under gradient accumulation only a step's last
        # micro-batch clips (and steps)
        if self.settings.grad_clip > 0 and self.accelerator.sync_gradients:
            clip = torch.nn.utils.clip_grad_norm_ if self.sharded else self.accelerator.clip_grad_norm_
            clip(model.parameters(), self.settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def checkpoint(self, step: int, state: dict | None = None) -> None:
        """Write checkpoint ``step``: gathering sharded tensors is a collective, so every process of a sharded
        run takes part; the main one writes."""
        if self.sharded or self.is_main:
            weights = full_state_dict(self._weights_module())
            ema = full_state_dict(self.ema) if self.ema is not None else None
            optimizers = {name: full_optimizer_state(opt) for name, opt in self.optimizers.items()}
            first, *others = optimizers
            if self.is_main:
                save_checkpoint(self.out, step, weights, optimizers[first], ema, state=state,
                                extra_optimizers={name: optimizers[name] for name in others})  # fmt: skip
        self.accelerator.wait_for_everyone()


def objective_step(
    run: TrainingRun,
    batch_at: Callable[[int, int, int], dict],
    loss_of: Callable[[nn.Module, dict, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
) -> TrainStep:
    """The step of a trainer with one model and one batch per step: ``batch_at(step, rank, world)`` is this
    process's batch, ``loss_of(model, batch, generator)`` its loss (under autocast) and figures to log."""

    def train_step(step: int, generator: torch.Generator):
        batch = to_device(batch_at(step, run.rank, run.world), run.device)
        with run.accelerator.autocast():
            loss, parts = loss_of(run.models["model"], batch, generator)
        run.backward(loss)
        run.update("model", run.lr(step))
        return loss, parts

    return train_step


def run_loop(
    run: TrainingRun,
    train_step: TrainStep,
    evaluate: Evaluate | None = None,
    max_steps: int | None = None,
    state: Callable[[], dict] | None = None,
) -> dict:
    """Train (or resume) ``run``'s models to its last step (or ``max_steps`` more); returns the summary (also
    written to ``summary.json``). ``state()`` adds to each checkpoint's ``state.json``."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    spec, cfg, out, acc = run.spec, run.settings, run.out, run.accelerator
    start, total, first = run.start, run.total, next(iter(run.bare))
    writer = SummaryWriter(str(out / "logs")) if run.is_main else None
    curve_path = out / "curve.json"
    curve = [c for c in (json.loads(curve_path.read_text()) if spec.curve and curve_path.is_file() else [])
             if c["step"] <= start]  # fmt: skip
    # a sharded EMA needs every process to run forward
    evaluating = evaluate is not None and (run.is_main or run.sharded)
    stop = total if max_steps is None else min(total, start + max_steps)
    bar = tqdm(total=total, initial=start, desc=spec.desc or f"train {spec.name}", unit="step",
               disable=not (run.progress and run.is_main))  # fmt: skip
    running: dict[str, float] = {}
    t_log, counted = time.perf_counter(), 0

    def run_eval(step: int) -> None:
        scores = evaluate(run.final_model, acc.autocast)
        if spec.curve:
            curve.append({"step": step, **{k: round(float(v), 5) for k, v in scores.items()}})
        if not run.is_main:
            return
        if spec.curve:
            curve_path.write_text(json.dumps(curve, indent=1) + "\n")
            plot_curve(curve, out / "curve.png", spec.curve_title or f"{spec.name} held-out",
                       keys=spec.curve_keys or tuple(scores), ylabel=spec.curve_ylabel)  # fmt: skip
        for key, value in scores.items():
            writer.add_scalar(f"eval/{key}", value, step)
        logger.info(
            "%s step %d: held-out %s", spec.name, step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        )

    for step in range(start, stop):
        loss, parts = train_step(step, run.generator(step))
        if spec.section is not None:
            check_finite_loss(loss, step, spec.section)
        if run.ema is not None:
            update_ema(run.ema, run.bare[first], ema_decay_at(step, cfg.ema_decay))
        run.last = parts
        for key, value in {"loss": loss.item(), **parts}.items():
            running[key] = running.get(key, 0.0) + float(value)
        counted += 1
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0:
            lr = run.optimizers[first].param_groups[0]["lr"]
            means = {key: value / counted for key, value in running.items()}
            figures = spec.log_figures(means) if spec.log_figures else means
            rate = counted / (time.perf_counter() - t_log)
            if writer is not None:
                for key, value in figures.items():
                    writer.add_scalar(f"{spec.log_prefix}/{key}", value, done)
                writer.add_scalar(f"{spec.log_prefix}/lr", lr, done)
                writer.add_scalar(f"{spec.log_prefix}/steps_per_second", rate, done)
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in figures.items()}, "lr": f"{lr:.1e}"})
            logger.info("%s step %d: train %s, %.2f steps/s", spec.name, done,
                        ", ".join(f"{k} {v:.4f}" for k, v in figures.items()), rate)  # fmt: skip
            running, counted, t_log = {}, 0, time.perf_counter()
        if evaluating and done % cfg.eval_every == 0:
            run_eval(done)  # before the checkpoint, so figures kept in its state include this evaluation
        if done % cfg.ckpt_every == 0:
            run.checkpoint(done, state() if state else None)
    bar.close()
    final_step = max(start, stop)
    if final_step > start and final_step % cfg.ckpt_every:
        run.checkpoint(final_step, state() if state else None)
    if evaluating and spec.curve and (not curve or curve[-1]["step"] != final_step):
        run_eval(final_step)
    summary = {"step": final_step, "total_steps": total, "parameters": run.parameters, "run": str(out),
               "precision": run.precision, "processes": run.world, **spec.summary}  # fmt: skip
    if evaluate is not None and spec.curve:
        summary["heldout"] = curve[-1] if curve else None
    summary["finished"] = final_step >= total
    if spec.finish is not None:
        summary = spec.finish(run, summary)
    if run.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        writer.close()
    acc.wait_for_everyone()
    return summary
