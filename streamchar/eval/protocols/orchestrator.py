"""``streamchar eval orchestrator``: how well the unit LM plans speech on held-out sentences.

For each held-out turn (test split: unseen identities and sentences) the orchestrator gets the
whole transcript (final) and a voice prompt (the two longest turns of the same character in other
held-out clips, as reference speech would give), and runs chunk by chunk with greedy decoding until
the turn ends.

- duration: frames from the first phoneme to the turn's end, against the corpus's (the fraction
  within ±10 % is the headline);
- frame accuracy against the ground truth, frame by frame from the first phoneme (free running, so
  timing drift counts against it), for whole units (phoneme x F0 bucket) and for phonemes alone;
- teacher-forced next-unit accuracy on the same split (the training curve's metric);
- time per chunk as a fraction of the chunk's playback time.

Writes JSON and a Markdown report.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from streamchar.orchestrator.dataset import read_turn_table, sessions_from_table

logger = logging.getLogger(__name__)


def heldout_turns(
    rows: list[dict], split: str, prompt_turns: int = 2
) -> list[tuple[dict, list[dict] | None]]:
    """(turn, voice prompt) for every turn of ``split``; the prompt is the ``prompt_turns`` longest
    turns of the same character from other sessions (reference speech of that voice)."""
    sessions = [s for s in sessions_from_table(rows) if s["split"] == split]
    by_char: dict[int, list[tuple[str, dict]]] = defaultdict(list)
    for s in sessions:
        for speaker, turn in s["turns"]:
            by_char[s["chars"][speaker]].append((s["key"], turn))
    pairs = []
    for s in sessions:
        for speaker, turn in s["turns"]:
            others = [t for key, t in by_char[s["chars"][speaker]] if key != s["key"]]
            # the longest other turns: more speech gives a steadier estimate of the voice's tempo
            others.sort(key=lambda t: -len(t["units"]))
            pairs.append((turn, others[:prompt_turns] or None))
    return pairs


def transcript_of(turn: dict) -> str:
    from streamchar.orchestrator.text import Word

    return " ".join(Word(text, boundary).written for text, boundary in turn["words"])


def evaluate_orchestrator(cfg, checkpoint: str | Path, table: str | Path, split: str = "test",
                          max_turns: int = 0, prompt_turns: int = 2, progress: bool = True) -> dict:  # fmt: skip
    from streamchar.loaders import load_orchestrator
    from streamchar.orchestrator.session import Orchestrator, VoicePrompt
    from streamchar.orchestrator.text import Frontend

    rows = read_turn_table(table)
    pairs = heldout_turns(rows, split, prompt_turns)
    if max_turns:
        pairs = pairs[:max_turns]
    if not pairs:
        raise ValueError(f"{table} has no '{split}' turns to evaluate.")
    frontend = Frontend(cfg.orchestrator.language)
    base = load_orchestrator(cfg, path=str(checkpoint))
    chunk_seconds = cfg.timeline.chunk_audio_tokens / cfg.timeline.audio_latent_rate
    per_turn, chunk_times = [], []
    for turn, prompt in tqdm(pairs, desc="eval orchestrator", unit="turn", disable=not progress):

        def make(prompt_turns):
            return Orchestrator(base.backend, base.vocab, base.chunk_frames, frontend,
                                {0: VoicePrompt(prompt_turns)} if prompt_turns else None, base.max_context_tokens,
                                base.max_history_tokens, base.limits)  # fmt: skip

        try:
            orch = make(prompt)
        except ValueError:  # prompts over half the context: keep the longest turn only
            orch = make(prompt[:1] if prompt else None)
        orch.push_text(transcript_of(turn), final=True)
        units, speaking = [], []
        for _ in range(2000):
            t0 = time.perf_counter()
            chunk = orch.next_chunk()
            chunk_times.append(time.perf_counter() - t0)
            units += chunk.units.tolist()
            speaking += chunk.speaking.tolist()
            if chunk.done:
                break
        spoken = [u for u, s in zip(units, speaking, strict=True) if s]
        truth = turn["units"]
        n = min(len(spoken), len(truth))
        size = base.vocab.buckets.size
        pred, true = np.array(spoken[:n]), np.array(truth[:n])
        per_turn.append({
            "frames_true": len(truth), "frames_pred": len(spoken),
            "unit_hits": int((pred == true).sum()), "phoneme_hits": int((pred // size == true // size).sum()),
            "compared": int(max(len(spoken), len(truth))), "prompted": prompt is not None,
        })  # fmt: skip
    ratio = np.array([t["frames_pred"] / t["frames_true"] for t in per_turn])
    compared = sum(t["compared"] for t in per_turn)
    times = np.array(chunk_times)
    result = {
        "checkpoint": str(checkpoint),
        "split": split,
        "turns": len(per_turn),
        "prompted_turns": sum(t["prompted"] for t in per_turn),
        "prompt_turns_each": prompt_turns,
        "duration_within_10pct": float(np.mean(np.abs(ratio - 1) <= 0.10)),
        "duration_ratio_median": float(np.median(ratio)),
        "duration_ratio_p10_p90": [float(np.percentile(ratio, 10)), float(np.percentile(ratio, 90))],
        "duration_abs_error_mean": float(np.mean(np.abs(ratio - 1))),
        "frame_unit_accuracy": sum(t["unit_hits"] for t in per_turn) / compared,
        "frame_phoneme_accuracy": sum(t["phoneme_hits"] for t in per_turn) / compared,
        "chunk_seconds": chunk_seconds,
        "chunk_time_median_s": float(np.median(times)),
        "chunk_time_p95_s": float(np.percentile(times, 95)),
        "chunk_time_fraction_of_playback_median": float(np.median(times) / chunk_seconds),
        "chunk_time_fraction_of_playback_p95": float(np.percentile(times, 95) / chunk_seconds),
        "torch_threads": torch.get_num_threads(),
        "per_turn": [[t["frames_true"], t["frames_pred"]] for t in per_turn],
    }
    return result


def judge_orchestrator(cfg, checkpoint: str | Path | None, table: str | Path, split: str = "test",
                       max_turns: int = 0, prompt_turns: int = 2, out: str | Path | None = None) -> dict:  # fmt: skip
    """Both figures of the orchestrator at ``checkpoint`` (default: ``orchestrator.path``) on the ``split`` turns
    of a turn table; writes ``OUT.json`` and ``OUT.md`` when ``out`` is given."""
    from streamchar.config import resolve_asset_path
    from streamchar.eval.reports.orchestrator import write_report
    from streamchar.loaders import load_unit_lm
    from streamchar.orchestrator.dataset import UnitLMDataset, collate_lm, read_turn_table
    from streamchar.training.orchestrator import evaluate_lm

    checkpoint = resolve_asset_path(checkpoint or cfg.orchestrator.path)
    result = evaluate_orchestrator(cfg, checkpoint, table, split=split, max_turns=max_turns,
                                   prompt_turns=prompt_turns)  # fmt: skip
    model, vocab, _ = load_unit_lm(checkpoint)
    heldout = UnitLMDataset(
        read_turn_table(table), split, vocab, cfg.train.orchestrator.max_tokens, seed=7919
    )
    batches = [collate_lm([heldout[i] for i in range(j, min(j + 16, len(heldout)))], vocab.pad)
               for j in range(0, len(heldout), 16)]  # fmt: skip
    teacher_forced = evaluate_lm(model, batches, vocab, "cpu", contextlib.nullcontext)
    if out:
        write_report(result, teacher_forced, out)
    return {**result, "teacher_forced": teacher_forced}
