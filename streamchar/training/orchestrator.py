"""``streamchar train orchestrator``: the unit language model on the corpus's turn table.

Resumable (the newest checkpoint in ``RUN/checkpoints`` is picked up), accelerate for devices and
processes, a held-out curve (loss, and teacher-forced frame accuracy of units and of phonemes) in
``RUN/curve.json`` / ``curve.png``, and the final weights exported as a plain HF folder
``RUN/final`` (what ``orchestrator.path`` points at).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from streamchar.config import StreamCharConfig, to_dict
from streamchar.orchestrator.dataset import UnitLMDataset, build_turn_table, collate_lm, read_turn_table
from streamchar.orchestrator.model import build_unit_lm, save_unit_lm
from streamchar.orchestrator.text import UnitVocabulary
from streamchar.training.loop import LoopSpec, TrainingRun, objective_step, run_loop

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
    tcfg, ocfg = cfg.train.orchestrator, cfg.orchestrator
    out = Path(out)
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
    vocab = UnitVocabulary()
    spec = LoopSpec("orchestrator", "train.orchestrator", tcfg, out, model_section, record_name="orchestrator",
                    settings_name="train_orchestrator", curve_keys=("loss", "unit_accuracy", "phoneme_accuracy"),
                    curve_ylabel="loss / accuracy", finish=_exporter(vocab))  # fmt: skip
    run = TrainingRun(spec, progress)
    if run.is_main:
        build_turn_table(corpus, out, progress=progress)
    run.accelerator.wait_for_everyone()
    rows = read_turn_table(out / "turns.jsonl")
    heldout_split = "test" if any(r["split"] == "test" for r in rows) else "train"
    spec.curve_title = f"orchestrator held-out ({heldout_split} split)"
    spec.summary["heldout_split"] = heldout_split

    torch.manual_seed(tcfg.seed)
    model = build_unit_lm(ocfg, vocab)
    run.setup(
        {"model": model}, {"model": {"lr": tcfg.lr, "weight_decay": tcfg.weight_decay, "betas": (0.9, 0.98)}}
    )

    train_set = UnitLMDataset(rows, "train", vocab, tcfg.max_tokens, seed=tcfg.seed, length=2**31 - 1)
    heldout = UnitLMDataset(rows, heldout_split, vocab, tcfg.max_tokens, seed=tcfg.seed + 7919)
    n_eval = min(tcfg.eval_sequences, len(heldout))
    eval_batches = [
        collate_lm([heldout[i] for i in range(j, min(j + tcfg.batch_size, n_eval))], vocab.pad)
        for j in range(0, n_eval, tcfg.batch_size)
    ]

    def batch_at(step: int, rank: int, world: int) -> dict:
        first = (step * world + rank) * tcfg.batch_size
        return collate_lm([train_set[i] for i in range(first, first + tcfg.batch_size)], vocab.pad)

    def held_out(model, autocast) -> dict:
        return evaluate_lm(model, eval_batches, vocab, run.device, autocast)

    train_step = objective_step(run, batch_at, lambda model, batch, generator: (model(**batch).loss, {}))
    return run_loop(run, train_step, held_out, max_steps)


def _exporter(vocab: UnitVocabulary):
    """The loop's ``finish``: the weights go to ``RUN/final`` as a plain HF folder, finished or not."""

    def finish(run: TrainingRun, summary: dict) -> dict:
        if run.is_main:
            save_unit_lm(run.final_model, vocab, run.out / "final",
                         extra={"trained_steps": summary["step"], "heldout": summary["heldout"]})  # fmt: skip
        return summary

    return finish
