"""Teacher objective and training: batch splitting, DDP and FSDP on CPU, resume, the CLI run."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamchar.denoiser.objective import TeacherObjective
from tests.denoiser_helpers import random_batch, tiny_dit

OBJECTIVE = TeacherObjective(audio_driven_fraction=0.5)


def _slice(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_two(worker, args: tuple, out: str) -> None:
    """Run ``worker`` on two gloo ranks. Gloo's teardown at process exit now and then aborts a rank
    ("terminate called without an active exception") after the work is done; that abort is let through only
    when rank 0's result file was written (the result is what the test then checks)."""
    try:
        mp.spawn(worker, args=args, nprocs=2, join=True)
    except mp.ProcessExitedException as e:
        if e.exit_code != -6 or not os.path.exists(out):  # -6: SIGABRT
            raise
        print(f"a rank aborted in gloo's teardown after writing {out}; checking the result")


def test_loss_is_a_mean_over_windows():
    model = tiny_dit()
    batch = random_batch(4)
    draws = OBJECTIVE.draw(batch, torch.Generator().manual_seed(0))
    full, parts = OBJECTIVE.loss(model, batch, draws)
    halves = [OBJECTIVE.loss(model, _slice(batch, i, i + 2), _slice(draws, i, i + 2))[0] for i in (0, 2)]
    assert torch.allclose(full, (halves[0] + halves[1]) / 2, atol=1e-6)
    assert parts["audio"][parts["audio_driven"]].abs().max() == 0  # given audio carries no loss


def test_the_video_time_and_shared_noise_are_drawn_after_everything_else_and_used():
    import math

    batch = random_batch(4)
    plain = OBJECTIVE.draw(batch, torch.Generator().manual_seed(0))
    both = TeacherObjective(audio_driven_fraction=0.5, max_t_video=1.0, video_noise_share=0.3)
    g = torch.Generator().manual_seed(0)
    drawn = both.draw(batch, g)
    for key in plain:  # what a run without them drew, drawn the same (the video noise then mixed)
        if key != "noise_video":
            assert torch.equal(drawn[key], plain[key]), key
    # naive reference: the same generator, the old draws, then the video time, then one noise per window
    g = torch.Generator().manual_seed(0)
    OBJECTIVE.draw(batch, g)
    z = torch.randn(4, generator=g)
    assert torch.allclose(drawn["t_video"], torch.sigmoid(z))  # logit-normal, shift 1, in (0, 1]
    c, _, h, w = batch["video"].shape[1:]
    shared = torch.randn(4, c, 1, h, w, generator=g)
    for f in range(batch["video"].shape[2]):
        naive = math.sqrt(0.3) * shared[:, :, 0] + math.sqrt(0.7) * plain["noise_video"][:, :, f]
        assert torch.allclose(drawn["noise_video"][:, :, f], naive, atol=1e-6)
    # the loss reads the video's own time: equal to the shared time's loss when given the same times
    model = tiny_dit()
    same = {**plain, "t_video": plain["t"]}
    assert torch.equal(OBJECTIVE.loss(model, batch, same)[0], OBJECTIVE.loss(model, batch, plain)[0])
    other = {**plain, "t_video": 1 - plain["t"]}
    assert not torch.equal(OBJECTIVE.loss(model, batch, other)[0], OBJECTIVE.loss(model, batch, plain)[0])
    with pytest.raises(ValueError, match="max_t_video"):
        TeacherObjective(max_t_video=1.5)
    with pytest.raises(ValueError, match="video_noise_share"):
        TeacherObjective(video_noise_share=1.0)


def _single_process_step(steps: int = 2) -> dict:
    model = tiny_dit(perturb=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = random_batch(4)
    for step in range(steps):
        draws = OBJECTIVE.draw(batch, torch.Generator().manual_seed(step))
        loss, _ = OBJECTIVE.loss(model, batch, draws)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ddp_worker(rank: int, world: int, port: int, out: str, steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(tiny_dit(perturb=False).train())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = random_batch(4)
    lo, hi = rank * 2, rank * 2 + 2
    for step in range(steps):
        draws = OBJECTIVE.draw(batch, torch.Generator().manual_seed(step))
        loss, _ = OBJECTIVE.loss(model, _slice(batch, lo, hi), _slice(draws, lo, hi))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()}, out)
    dist.barrier()  # neither rank tears the group down while the other still uses it (a rare SIGABRT)
    dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process_with_the_combined_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    _spawn_two(_ddp_worker, (2, _free_port(), out, 2), out)
    ddp, single = torch.load(out), _single_process_step(2)
    worst = max((ddp[k] - single[k]).abs().max().item() for k in single)
    print(f"DDP (2 x 2 windows) vs one process (4 windows): max parameter difference {worst:.2e}")
    assert worst < 1e-5


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = tiny_dit(perturb=False).train()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = _slice(random_batch(4), rank * 2, rank * 2 + 2)
    losses = []
    for _ in range(12):
        draws = OBJECTIVE.draw(batch, torch.Generator().manual_seed(100 + rank))  # the same draws: a fit test
        loss, _ = OBJECTIVE.loss(model, batch, draws)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    if rank == 0:
        with open(out, "w") as f:
            json.dump(losses, f)
    dist.barrier()  # neither rank tears the group down while the other still uses it (a rare SIGABRT)
    dist.destroy_process_group()


def test_fsdp_on_two_cpu_processes_trains(tmp_path):
    out = str(tmp_path / "fsdp.json")
    _spawn_two(_fsdp_worker, (2, _free_port(), out), out)
    losses = json.load(open(out))
    print(f"FSDP losses: {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.8 * losses[0]


# -- the trainer on the tiny corpus's latent cache ---------------------------------------------------
TRAIN_OVERRIDES = [
    "denoiser.width=32", "denoiser.depth=2", "denoiser.heads=2", "denoiser.patch_size=4",
    "train.teacher.batch_size=2", "train.teacher.steps=4", "train.teacher.ckpt_every=2",
    "train.teacher.eval_every=2", "train.teacher.eval_windows=4", "train.teacher.log_every=1",
    "train.teacher.mixed_precision=no", "train.teacher.warmup_steps=1",
]  # fmt: skip


def _teacher_config(extra=()):
    from streamchar.config import load_config
    from tests.conftest import TINY_CORPUS_OVERRIDES

    return load_config(None, TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + list(extra))


def _weights(run):
    from safetensors.torch import load_file

    from streamchar.checkpoints import list_checkpoints

    last = list_checkpoints(run)[-1]
    return {name: load_file(str(last / f"{name}.safetensors")) for name in ("model", "ema", "optimizer")}


def test_killed_and_resumed_training_equals_an_uninterrupted_run(cache, tmp_path):
    from streamchar.training.teacher import train_teacher

    cfg = _teacher_config()
    straight = train_teacher(cfg, cache, tmp_path / "straight", progress=False)
    first = train_teacher(cfg, cache, tmp_path / "resumed", max_steps=2, progress=False)
    assert first["step"] == 2 and not first["finished"]
    second = train_teacher(cfg, cache, tmp_path / "resumed", progress=False)
    assert second["step"] == straight["step"] == 4 and second["finished"]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    curve = json.loads((tmp_path / "resumed" / "curve.json").read_text())
    assert [c["step"] for c in curve] == [2, 4] and all(c["video"] > 0 for c in curve)
    assert (tmp_path / "resumed" / "logs").is_dir() and (tmp_path / "resumed" / "curve.png").is_file()


def test_resuming_with_another_architecture_is_refused(cache, tmp_path):
    from streamchar.checkpoints import CheckpointError
    from streamchar.training.teacher import train_teacher

    train_teacher(_teacher_config(), cache, tmp_path / "run", max_steps=1, progress=False)
    with pytest.raises(CheckpointError, match="different denoiser"):
        train_teacher(_teacher_config(["denoiser.depth=3"]), cache, tmp_path / "run", progress=False)


def test_a_teacher_started_from_another_starts_from_its_weights(cache, tmp_path):
    from streamchar.checkpoints import CheckpointError
    from streamchar.denoiser.build import build_denoiser
    from streamchar.training.teacher import latent_spec_from_cache, start_from, train_teacher

    train_teacher(_teacher_config(), cache, tmp_path / "first", max_steps=1, progress=False)
    from streamchar.data.latents import LatentCache

    cfg, lc = _teacher_config(), LatentCache(cache)
    spec, timeline = latent_spec_from_cache(lc), lc.window_timeline(cfg.timeline)
    model = build_denoiser(cfg.denoiser, timeline, spec)
    start_from(model, tmp_path / "first", cfg, spec)
    ema = _weights(tmp_path / "first")["ema"]
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    other = _teacher_config(["denoiser.depth=3"])
    with pytest.raises(CheckpointError, match="train.teacher.init"):
        start_from(build_denoiser(other.denoiser, timeline, spec), tmp_path / "first", other, spec)
    run = train_teacher(_teacher_config([f"train.teacher.init={tmp_path / 'first'}"]), cache, tmp_path / "second",
                        max_steps=1, progress=False)  # fmt: skip
    assert run["step"] == 1


@pytest.mark.parametrize("mode", ["joint", "audio"])
def test_sample_writes_video_with_sound_and_contact_sheet(cache, tmp_path, mode):
    from streamchar.data.preview import probe_streams
    from streamchar.eval.protocols.teacher_samples import sample_clip
    from streamchar.training.teacher import train_teacher

    codec = f"video_codec.path={cache.parent / 'codec'}"
    cfg = _teacher_config([codec, "sample.steps=2", "timeline.chunk_latent_frames=6", "timeline.sink_latent_frames=6",
                           "timeline.motion_latent_frames=2"])  # fmt: skip
    run = tmp_path / "run"
    train_teacher(cfg, cache, run, max_steps=1, progress=False)
    summary = sample_clip(cfg, run, cache, tmp_path / "out", mode=mode, chunks=3)
    assert summary["chunks"] == 3 and len(summary["chunk_seconds"]) == 3
    streams = {s["type"]: s for s in probe_streams(summary["video"])}
    assert streams["video"]["codec"] == "h264" and streams["audio"]["codec"] == "aac"
    assert abs(streams["video"]["duration"] - streams["audio"]["duration"]) < 0.064
    assert (tmp_path / "out" / "contact_sheet.png").is_file()


def test_sample_rejects_bad_reference_images(cache, tmp_path):
    from PIL import Image

    from streamchar.codecs.video import load_video_codec
    from streamchar.eval.protocols.teacher_samples import encode_reference_image

    codec = load_video_codec(cache.parent / "codec")
    Image.new("RGB", (80, 60)).save(tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="square"):
        encode_reference_image(tmp_path / "wide.png", codec)
    with pytest.raises(ValueError, match="PNG or JPEG"):
        encode_reference_image(tmp_path / "broken.png", codec)
    Image.new("RGB", (128, 128), (200, 100, 50)).save(tmp_path / "big.png")
    assert encode_reference_image(tmp_path / "big.png", codec).shape == (1, 4, 1, 8, 8)


def test_mouth_probe_reads_mouth_opening_from_latents(cache):
    import numpy as np

    from streamchar.data.latents import LatentCache
    from streamchar.eval.instruments.mouth_probe import fit_mouth_probe, latent_mouth_open
    from streamchar.eval.metrics.statistics import pearson

    lc = LatentCache(cache)
    probe = fit_mouth_probe(lc, lc.timeline, split="train", ridge=1e-3)
    entries = [e for e in lc.entries("train") if latent_mouth_open(lc, e, lc.timeline).std() > 0]
    predicted = np.concatenate([probe.predict(lc.tensor(e, "video")) for e in entries])
    truth = np.concatenate([latent_mouth_open(lc, e, lc.timeline) for e in entries])
    assert pearson(predicted, truth) > 0.5  # fitted on these frames: a sanity check of the regression
    assert np.isnan(pearson(np.ones(4), np.arange(4)))


def _trainer_worker(rank: int, world: int, port: int, cache: str, run: str, extra: list) -> None:
    from streamchar.training.teacher import train_teacher

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    train_teacher(_teacher_config(extra), cache, run, progress=False)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_trainer_on_two_processes_equals_one_process_with_the_combined_batch(cache, tmp_path, strategy):
    """`accelerate launch --num_processes 2` in miniature: DDP replicates, FSDP2 shards; both must give
    the weights, EMA and optimiser state of one process that sees both halves of every batch."""
    from streamchar.training.teacher import train_teacher

    steps = ["train.teacher.steps=2", "train.teacher.grad_accum=2"]
    fsdp = [f"train.teacher.fsdp={strategy == 'fsdp'}"]
    train_teacher(
        _teacher_config(steps + ["train.teacher.batch_size=4"]), cache, tmp_path / "one", progress=False
    )
    mp.spawn(
        _trainer_worker,
        args=(2, _free_port(), str(cache), str(tmp_path / "two"), steps + fsdp),
        nprocs=2,
        join=True,
    )
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["strategy"] == strategy
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max((a[name][key] - b[name][key]).abs().max().item() for name in a for key in a[name])
    print(f"{strategy}: 2 processes x 2 windows vs 1 process x 4 windows, max difference {worst:.2e}")
    assert worst < 1e-5


def _cli_train(cache, run, extra=()):
    import subprocess
    import sys

    from tests.conftest import TINY_CORPUS_OVERRIDES

    args = [
        sys.executable,
        "-m",
        "streamchar.cli",
        "-q",
        "train",
        "teacher",
        "--latents",
        str(cache),
        "--out",
        str(run),
    ]
    return subprocess.Popen(args + TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + list(extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(cache, tmp_path):
    import signal
    import time

    extra = ["train.teacher.steps=30", "train.teacher.ckpt_every=2", "train.teacher.eval_every=100"]
    assert _cli_train(cache, tmp_path / "straight", extra).wait(timeout=600) == 0
    victim = _cli_train(cache, tmp_path / "killed", extra)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints / "step-00000004").is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert _cli_train(cache, tmp_path / "killed", extra).wait(timeout=600) == 0
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["step"] == 30 and summary["finished"]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def test_loading_a_teacher_with_another_window_is_refused(cache, tmp_path):
    from streamchar.checkpoints import CheckpointError
    from streamchar.data.latents import LatentCache
    from streamchar.loaders import load_teacher
    from streamchar.training.teacher import latent_spec_from_cache, train_teacher

    train_teacher(_teacher_config(), cache, tmp_path / "run", max_steps=1, progress=False)
    spec = latent_spec_from_cache(LatentCache(cache))
    assert load_teacher(tmp_path / "run", _teacher_config(), spec) is not None
    with pytest.raises(CheckpointError, match="another window"):
        load_teacher(tmp_path / "run", _teacher_config(["timeline.chunk_latent_frames=6"]), spec)
    with pytest.raises(CheckpointError, match="No teacher checkpoint"):
        load_teacher(tmp_path, _teacher_config(), spec)
