"""``streamchar train orchestrator``: the unit language model on the corpus's turn table.

Resumable (the newest checkpoint in ``RUN/checkpoints`` is picked up), accelerate for devices and
processes, a held-out curve (loss, and teacher-forced frame accuracy of units and of phonemes) in
``RUN/curve.json`` / ``curve.png``, and the final weights exported as a plain HF folder
``RUN/final`` (what ``orchestrator.path`` points at).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from streamchar.config import StreamCharConfig, to_dict
from streamchar.eval.plots import plot_curve
from streamchar.orchestrator.dataset import UnitLMDataset, build_turn_table, collate_lm, read_turn_table
from streamchar.orchestrator.model import build_unit_lm, save_unit_lm
from streamchar.orchestrator.text import UnitVocabulary
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


@torch.no_grad()
def evaluate_lm(model, batches: list[dict], vocab: UnitVocabulary, device, autocast) -> dict:
    """Held-out loss and teacher-forced accuracy over frame units (unit and phoneme level)."""
    model.eval()
    loss_sum = tokens = correct = phoneme_correct = frames = 0.0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
        target = batch["labels"][:, 1:]
        logits = logits[:, :-1]
        valid = target != -100
        loss_sum += torch.nn.functional.cross_entropy(logits[valid], target[valid], reduction="sum").item()
        tokens += valid.sum().item()
        is_unit = valid & (target >= vocab.unit_offset)
        pred = logits.argmax(-1)
        correct += (pred == target)[is_unit].sum().item()
        size = vocab.buckets.size
        same_phoneme = ((pred - vocab.unit_offset) // size == (target - vocab.unit_offset) // size) & (
            pred >= vocab.unit_offset
        )
        phoneme_correct += same_phoneme[is_unit].sum().item()
        frames += is_unit.sum().item()
    model.train()
    return {
        "loss": loss_sum / max(tokens, 1),
        "unit_accuracy": correct / max(frames, 1),
        "phoneme_accuracy": phoneme_correct / max(frames, 1),
    }


def train_orchestrator(
    cfg: StreamCharConfig,
    corpus: str | Path,
    out: str | Path,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the unit LM; returns a summary. ``max_steps`` stops early (for sessions)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    tcfg, ocfg = cfg.train.orchestrator, cfg.orchestrator
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    out = Path(out)
    precision = resolve_mixed_precision(tcfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    model_keys = (
        "architecture",
        "hidden_size",
        "layers",
        "heads",
        "kv_heads",
        "intermediate_size",
        "max_positions",
    )
    model_section = {k: v for k, v in to_dict(ocfg).items() if k in model_keys}
    if accelerator.is_main_process:
        guard_run_config(out, "orchestrator", model_section)
        (out / "train_orchestrator.json").write_text(
            json.dumps(to_dict(tcfg), indent=1, sort_keys=True) + "\n"
        )
        build_turn_table(corpus, out, progress=progress)
    accelerator.wait_for_everyone()
    rows = read_turn_table(out / "turns.jsonl")
    vocab = UnitVocabulary()

    torch.manual_seed(tcfg.seed)
    model = build_unit_lm(ocfg, vocab)
    params = sum(p.numel() for p in model.parameters())
    state = resume_latest(out, model)
    start = state["step"] if state else 0
    if state is None:
        logger.info(
            "orchestrator: %.2fM parameters, %s precision, %d process(es)", params / 1e6, precision, world
        )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.98)
    )
    if state is not None and (optimizer_state := read_optimizer_state(state["checkpoint"])) is not None:
        optimizer.load_state_dict(optimizer_state)
    model, optimizer = accelerator.prepare(model, optimizer)

    train_set = UnitLMDataset(rows, "train", vocab, tcfg.max_tokens, seed=tcfg.seed, length=2**31 - 1)
    heldout_split = "test" if any(r["split"] == "test" for r in rows) else "train"
    heldout = UnitLMDataset(rows, heldout_split, vocab, tcfg.max_tokens, seed=tcfg.seed + 7919)
    n_eval = min(tcfg.eval_sequences, len(heldout))
    eval_batches = [
        collate_lm([heldout[i] for i in range(j, min(j + tcfg.batch_size, n_eval))], vocab.pad)
        for j in range(0, n_eval, tcfg.batch_size)
    ]

    curve_path = out / "curve.json"
    curve = [
        c for c in (json.loads(curve_path.read_text()) if curve_path.is_file() else []) if c["step"] <= start
    ]
    stop = tcfg.steps if max_steps is None else min(tcfg.steps, start + max_steps)
    bar = tqdm(total=tcfg.steps, initial=start, desc="train orchestrator", unit="step",
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    running, seen, t_log = 0.0, 0, time.perf_counter()

    def run_eval(step: int) -> dict:
        scores = evaluate_lm(accelerator.unwrap_model(model), eval_batches, vocab, accelerator.device,
                             accelerator.autocast)  # fmt: skip
        curve.append({"step": step, **{k: round(v, 5) for k, v in scores.items()}})
        curve_path.write_text(json.dumps(curve, indent=1) + "\n")
        plot_curve(curve, out / "curve.png", f"orchestrator held-out ({heldout_split} split)",
                   keys=("loss", "unit_accuracy", "phoneme_accuracy"), ylabel="loss / accuracy")  # fmt: skip
        logger.info("step %d: held-out loss %.4f, unit accuracy %.3f, phoneme accuracy %.3f", step,
                    scores["loss"], scores["unit_accuracy"], scores["phoneme_accuracy"])  # fmt: skip
        return scores

    model.train()
    for step in range(start, stop):
        lr = schedule_lr(optimizer, step, tcfg)
        first = step * world * tcfg.batch_size + rank * tcfg.batch_size
        batch = collate_lm([train_set[i] for i in range(first, first + tcfg.batch_size)], vocab.pad)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = model(**batch).loss
        accelerator.backward(loss)
        if tcfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        check_finite_loss(loss, step, "train.orchestrator")
        running += loss.item()
        seen += 1
        done = step + 1
        bar.update(1)
        if done % tcfg.log_every == 0:
            rate = seen / (time.perf_counter() - t_log)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.1e}", steps_s=f"{rate:.2f}")
            logger.info("step %d: train loss %.4f, %.2f steps/s", done, running / seen, rate)
            running, seen, t_log = 0.0, 0, time.perf_counter()
        if done % tcfg.ckpt_every == 0 and accelerator.is_main_process:
            save_checkpoint(out, done, accelerator.unwrap_model(model), optimizer)
        if done % tcfg.eval_every == 0 and accelerator.is_main_process:
            run_eval(done)
    bar.close()
    final_step = max(start, stop)
    summary: dict = {"step": final_step, "total_steps": tcfg.steps, "parameters": params, "run": str(out),
                     "precision": precision, "processes": world}  # fmt: skip
    if accelerator.is_main_process:
        if final_step > start and final_step % tcfg.ckpt_every:
            save_checkpoint(out, final_step, accelerator.unwrap_model(model), optimizer)
        if not curve or curve[-1]["step"] != final_step:
            run_eval(final_step)
        summary["heldout"], summary["heldout_split"] = curve[-1], heldout_split
        summary["finished"] = final_step >= tcfg.steps
        save_unit_lm(accelerator.unwrap_model(model), vocab, out / "final",
                     extra={"trained_steps": final_step, "heldout": curve[-1]})  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return summary
