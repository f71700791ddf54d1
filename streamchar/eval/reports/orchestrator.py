"""The orchestrator evaluation's report (``streamchar eval orchestrator``): ``OUT.json`` and ``OUT.md``."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(result: dict, teacher_forced: dict | None, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if teacher_forced:
        result = {**result, "teacher_forced": teacher_forced}
    out.with_suffix(".json").write_text(json.dumps(result) + "\n")
    lines = [
        f"# Orchestrator on held-out turns ({result['split']} split)",
        "",
        f"Checkpoint `{result['checkpoint']}`, {result['turns']} turns ({result['prompted_turns']} with a voice "
        f"prompt: the {result.get('prompt_turns_each', 2)} longest turn(s) of the same character in other clips), "
        "greedy decoding, whole transcript "
        "pushed final. Duration: frames from the first phoneme to the end of the turn. Free-running accuracy "
        "compares frame t with frame t of the truth, so any timing drift counts against it.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| duration within ±10 % | {result['duration_within_10pct']:.1%} |",
        f"| duration ratio, median (p10–p90) | {result['duration_ratio_median']:.3f} "
        f"({result['duration_ratio_p10_p90'][0]:.3f}–{result['duration_ratio_p10_p90'][1]:.3f}) |",
        f"| frame unit accuracy (free running) | {result['frame_unit_accuracy']:.1%} |",
        f"| frame phoneme accuracy (free running) | {result['frame_phoneme_accuracy']:.1%} |",
    ]
    if teacher_forced:
        lines += [
            f"| next-unit accuracy, teacher forced | {teacher_forced['unit_accuracy']:.1%} |",
            f"| next-phoneme accuracy, teacher forced | {teacher_forced['phoneme_accuracy']:.1%} |",
        ]
    lines += [
        f"| time per chunk ({result['chunk_seconds']:.2f} s of playback), median / p95 | "
        f"{result['chunk_time_median_s'] * 1000:.0f} / {result['chunk_time_p95_s'] * 1000:.0f} ms "
        f"({result['chunk_time_fraction_of_playback_median']:.1%} / {result['chunk_time_fraction_of_playback_p95']:.1%}"
        f" of playback, {result['torch_threads']} threads) |",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
