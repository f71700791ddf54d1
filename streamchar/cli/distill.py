"""``streamchar distill``: the two distillation stages, the toy, and students against the teacher."""

from __future__ import annotations

import argparse

from streamchar.cli.arguments import CONFIG, LATENTS, arg, command, group, out, run_args
from streamchar.cli.common import load, print_json


def cmd_distill_stage1(args: argparse.Namespace) -> None:
    """Generates teacher ODE pairs (distill.pairs, resumable shards in distill.pairs_dir or OUT/pairs),
    regresses a student initialised as the teacher onto them, then trains it with DMD (real score: the teacher
    with guidance; fake score trained online) to distill.student_steps steps with guidance folded in. Runs
    under `accelerate launch` with DDP (or FSDP with distill.fsdp=true); re-running with the same --out
    resumes. The student is exported to OUT/student."""
    from streamchar.distill.stage1 import distill_stage1

    print_json(distill_stage1(load(args), args.latents, args.out, max_steps=args.max_steps))


def cmd_distill_stage2(args: argparse.Namespace) -> None:
    """Starts from a stage-1 student (distill.init=RUN/student) or the teacher itself (distill.init=TEACHER);
    each step rolls out distill.rollout_chunks consecutive chunks per session with the student's own sink and
    motion frames, gradients through the last denoising step of each chunk only. Resumable; exports
    OUT/student."""
    from streamchar.distill.stage2 import distill_stage2

    print_json(distill_stage2(load(args), args.latents, args.out, max_steps=args.max_steps))


def cmd_distill_toy(args: argparse.Namespace) -> None:
    """Trains a flow-matching teacher on an 8-mode 2D mixture, distils a one-step student with the same DMD
    losses, and reports each sampler against the teacher's many-step samples (OUT/toy.json, toy.png)."""
    from dataclasses import asdict

    from streamchar.distill.toy import ToyConfig, run_toy

    cfg = ToyConfig(student_steps=args.student_steps, seed=args.seed)
    result = run_toy(cfg, args.out)
    print_json({"config": asdict(cfg), "samplers": result["samplers"], "out": args.out})


def cmd_distill_compare(args: argparse.Namespace) -> None:
    """Writes OUT/compare.json, compare.md and compare_sheet.png (ground truth, then one row per model)."""
    from streamchar.eval.protocols.distill import compare_samplers, parse_contenders

    cfg = load(args)
    result = compare_samplers(cfg, parse_contenders(args.model, cfg), args.latents, args.out, args.windows)
    print(f"wrote {args.out}/compare.json, compare.md, compare_sheet.png")
    print_json(result["samplers"])


def cmd_distill_drift(args: argparse.Namespace) -> None:
    """Writes OUT/drift.json, drift.md and drift.png."""
    from streamchar.eval.protocols.distill import drift_session, parse_contenders

    cfg = load(args)
    result = drift_session(
        cfg, parse_contenders(args.model, cfg), args.latents, args.out, args.chunks, args.segment
    )
    print(f"wrote {args.out}/drift.json, drift.md, drift.png")
    print_json(result["segments"])


MODELS = arg("--model", action="append", required=True,
             help="NAME=PATH[@STEPS][:nosink]: a teacher (guided with the sample config, at STEPS) or a student "
             "(its own steps, guidance folded); repeat")  # fmt: skip


def register(sub) -> None:
    distill_sub = group(sub, "distill", help="two-stage distillation of the teacher into few-step students")
    command(
        distill_sub, "stage1", cmd_distill_stage1,
        "sampler compression: teacher ODE pairs, regression, then DMD on single windows (resumable)",
        LATENTS, *run_args("run folder"),
    )  # fmt: skip
    command(
        distill_sub, "stage2", cmd_distill_stage2,
        "rollout fine-tuning: DMD on chunks the student generates from its own motion frames and sink",
        LATENTS, *run_args("run folder"),
    )  # fmt: skip
    command(
        distill_sub, "toy", cmd_distill_toy,
        "DMD on a 2D Gaussian mixture: teacher, one-step student, per-mode mass and MMD",
        out("output folder", default="docs/results/distill_toy"),
        arg("--student-steps", type=int, default=3000, help="DMD updates of the student"),
        arg("--seed", type=int, default=0),
    )  # fmt: skip
    command(
        distill_sub, "compare", cmd_distill_compare,
        "students against the many-step teacher on the same held-out windows and noise, timed side by side",
        LATENTS, MODELS, arg("--windows", type=int, default=8, help="held-out windows"),
        out("output folder", default="docs/results/distill_stage1"), CONFIG,
    )  # fmt: skip
    command(
        distill_sub, "drift", cmd_distill_drift,
        "a long session per model: distance to the reference identity and quality proxies per chunk",
        LATENTS, MODELS, arg("--chunks", type=int, default=60, help="session length in chunks"),
        arg("--segment", type=int, default=10, help="chunks per reported segment"),
        out("output folder", default="docs/results/distill_drift"), CONFIG,
    )  # fmt: skip
