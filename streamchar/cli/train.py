"""``streamchar train``: the video autoencoder, the priors, the teacher and the orchestrator (all resumable)."""

from __future__ import annotations

import argparse

from streamchar.cli.arguments import LATENTS, arg, command, group, run_args
from streamchar.cli.common import load, print_json


def cmd_train_vae(args: argparse.Namespace) -> None:
    """Train the video autoencoder with accelerate; re-running with the same --out resumes from the last
    checkpoint. The final codec is written to OUT/codec."""
    from streamchar.training.vae import train_vae

    cfg = load(args)
    print_json(train_vae(cfg, args.data, args.out, max_steps=args.max_steps))


def cmd_train_teacher(args: argparse.Namespace) -> None:
    """Flow-matching training of the denoiser on windows of a latent cache (streamchar data encode). Runs on
    one process, or under `accelerate launch` with DDP or FSDP; re-running with the same --out resumes exactly
    (same data, noise, optimiser and EMA)."""
    from streamchar.training.teacher import train_teacher

    print_json(train_teacher(load(args), args.latents, args.out, max_steps=args.max_steps))


def cmd_train_prior(args: argparse.Namespace) -> None:
    """Regression training of a prior the DiT refines (DESIGN.md section 7): --which audio maps a chunk's
    units, speaking flag and reference voice to its audio latents (L1); --which video maps the reference
    latent, the last motion latent and the chunk's audio to its video latents (MSE, weighted on the mouth),
    reading the trained acoustic prior at prior.audio_path. Re-running with the same --out resumes; the EMA
    weights are exported to OUT/final (set prior.audio_path / prior.video_path to it)."""
    from streamchar.training.prior import train_prior

    print_json(train_prior(load(args), args.which, args.latents, args.out, max_steps=args.max_steps))


def cmd_train_orchestrator(args: argparse.Namespace) -> None:
    """Builds RUN/turns.jsonl from the corpus's phoneme timings once, then trains the causal LM that plans one
    unit (phoneme x F0 bucket) per audio frame. Re-running with the same --out resumes; the result is exported
    to RUN/final as a plain Hugging Face model + tokenizer (set orchestrator.path to it)."""
    from streamchar.training.orchestrator import train_orchestrator

    print_json(train_orchestrator(load(args), args.data, args.out, max_steps=args.max_steps))


def register(sub) -> None:
    train_sub = group(sub, "train", help="training")
    command(
        train_sub, "vae", cmd_train_vae, "train the video autoencoder on a corpus (resumable)",
        arg("--data", required=True, help="corpus folder"),
        *run_args("run folder (checkpoints, logs, final codec)"),
    )  # fmt: skip
    command(
        train_sub, "teacher", cmd_train_teacher,
        "train the joint audio-video DiT with flow matching on a latent cache (resumable)",
        LATENTS, *run_args("run folder (checkpoints, logs, curve.json)"),
    )  # fmt: skip
    command(
        train_sub, "prior", cmd_train_prior,
        "train the acoustic or the video prior (regression) on a latent cache (resumable)",
        arg("--which", required=True, choices=("audio", "video"), help="which prior"),
        arg("--latents", required=True, help="latent cache folder (streamchar data encode)"),
        *run_args("run folder (checkpoints, logs, curve, final/)"),
    )  # fmt: skip
    command(
        train_sub, "orchestrator", cmd_train_orchestrator,
        "train the unit language model (transcript -> frame units) on a corpus (resumable)",
        arg("--data", required=True, help="corpus folder (streamchar data synth / prepare)"),
        *run_args("run folder (turn table, checkpoints, curve, final/)"),
    )  # fmt: skip
