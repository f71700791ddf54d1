"""Teacher ODE pairs for stage 1's regression: noise, the teacher's guided trajectory on a coarse grid,
and where it ends, written to resumable shards.

Pair ``i`` is window ``i`` of a :class:`WindowDataset` with the pairs' own seed, so a shard stores only
latents and the window index; the window (references, sink, motion, conditions) is rebuilt from the
cache when the pair is read. States are kept at the times of ``sampling_grid(record_steps, shift,
start)`` (t = 1, 0.75, 0.5, 0.25 for 4 from noise; scaled by ``start`` for a shallow teacher), which holds
the grid of every student with a step count dividing ``record_steps``: one set of pairs serves the 1-,
2- and 4-step students.

A shard is written under a temporary name and renamed when complete; generation skips shards that
exist and load, so a killed run continues where it stopped. With several processes each takes every
``world``-th shard.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from streamchar.data.windows import WindowDataset
from streamchar.denoiser.dit import Conditions, JointDiT
from streamchar.denoiser.flow import Guidance, guided_velocity, sampling_grid, video_noise
from streamchar.denoiser.objective import TeacherObjective
from streamchar.denoiser.residual import residual_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairSpec:
    count: int = 160
    teacher_steps: int = 16
    record_steps: int = 4
    shift: float = 1.0
    guidance: tuple[float, float, float] = (2.0, 1.5, 1.5)
    shard_size: int = 8
    seed: int = 101
    start: float = 1.0  # the teacher's sample_start: its trajectories start from noise scaled by it
    start_video: float | None = None  # the video's own start (denoiser.sample_start_video); None: start
    video_noise_share: float = 0.0  # the video noise's share one window's frames have in common

    @property
    def video_start(self) -> float:
        return self.start if self.start_video is None else self.start_video

    def record(self) -> dict:
        """What ``pairs.json`` holds (the two-start fields only when set, so older pair folders still match)."""
        out = asdict(self)
        out["guidance"] = list(self.guidance)
        if self.start_video is None:
            del out["start_video"]
        if not self.video_noise_share:
            del out["video_noise_share"]
        return out

    def check(self, student_steps: int) -> None:
        if self.teacher_steps % self.record_steps:
            raise ValueError(
                f"distill pair teacher steps ({self.teacher_steps}) must be a multiple of record steps "
                f"({self.record_steps})."
            )
        if self.record_steps % student_steps:
            raise ValueError(
                f"A {student_steps}-step student needs pairs recorded on a grid it divides; set the record steps "
                f"({self.record_steps}) to a multiple of {student_steps}."
            )


def pair_windows(cache, spec: PairSpec, timeline, unit_context: int = 0) -> WindowDataset:
    return WindowDataset(cache, "train", length=spec.count, seed=spec.seed, first_chunk_prob=0.1, timeline=timeline,
                         unit_context=unit_context)  # fmt: skip


@torch.no_grad()
def teacher_trajectory(
    teacher: JointDiT, spec: PairSpec, batch: dict, noise: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The teacher's guided Euler solution from ``noise``, with its states on the record grid (the video on its
    own grid when it has its own start)."""
    guidance = Guidance(*spec.guidance)
    conditions, context = Conditions.of(batch), TeacherObjective.context(batch)
    grid = sampling_grid(spec.teacher_steps, spec.shift, spec.start).tolist()
    grid_v = sampling_grid(spec.teacher_steps, spec.shift, spec.video_start).tolist()
    every = spec.teacher_steps // spec.record_steps
    video, audio = spec.video_start * noise[0], spec.start * noise[1]
    out = {}
    for i in range(spec.teacher_steps):
        if i % every == 0:
            out[f"video_{i // every}"], out[f"audio_{i // every}"] = video.clone(), audio.clone()
        ta = torch.full((video.shape[0],), grid[i], device=video.device)
        tv = torch.full_like(ta, grid_v[i])
        v_video, v_audio = guided_velocity(
            teacher, guidance, video, audio, (tv, ta), conditions, context, batch["audio_mask"]
        )
        video = video + (grid_v[i + 1] - grid_v[i]) * v_video.float()
        audio = audio + (grid[i + 1] - grid[i]) * v_audio.float()
    out["video_x0"], out["audio_x0"] = video, audio
    return out


def _shard_path(folder: Path, first: int) -> Path:
    return folder / f"pairs-{first:06d}.safetensors"


def _valid(path: Path) -> bool:
    try:
        load_file(str(path))
        return True
    except Exception:
        return False


def generate_pairs(
    teacher: JointDiT,
    cache,
    timeline,
    spec: PairSpec,
    folder: str | Path,
    device,
    autocast,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    priors=None,
) -> Path:
    """Write (or complete) the pair shards in ``folder``; returns it. A residual teacher's pairs are states
    around the ``priors``' means."""
    from tqdm.auto import tqdm

    from streamchar.training.loop import collate, to_device

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "pairs.json"
    wanted = spec.record()
    if rank == 0:
        if record.is_file() and json.loads(record.read_text()) != wanted:
            raise ValueError(
                f"{folder} holds pairs made with other settings; delete it or point the pairs folder elsewhere."
            )
        record.write_text(json.dumps(wanted, indent=1) + "\n")
    windows = pair_windows(cache, spec, timeline, priors.context if priors is not None else 0)
    firsts = list(range(0, spec.count, spec.shard_size))[rank::world]
    todo = [f for f in firsts if not _valid(_shard_path(folder, f))]
    bar = tqdm(total=len(firsts), initial=len(firsts) - len(todo), desc="teacher ODE pairs", unit="shard",
               disable=not (progress and rank == 0))  # fmt: skip
    for first in todo:
        indices = list(range(first, min(first + spec.shard_size, spec.count)))
        batch = residual_batch(teacher, to_device(collate([windows[i] for i in indices]), device), priors)
        g = torch.Generator().manual_seed(spec.seed * 1_000_003 + first)
        noise = (video_noise(tuple(batch["video"].shape), g, spec.video_noise_share).to(device),
                 torch.randn(batch["audio"].shape, generator=g).to(device))  # fmt: skip
        with autocast():
            tensors = teacher_trajectory(teacher, spec, batch, noise)
        tensors = {k: v.float().cpu().contiguous() for k, v in tensors.items()}
        tensors["index"] = torch.tensor(indices)
        path = _shard_path(folder, first)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
        bar.update(1)
    bar.close()
    return folder


class PairSet:
    """The pairs in a folder, with their windows rebuilt from the cache."""

    def __init__(self, folder: str | Path, cache, timeline, spec: PairSpec, unit_context: int = 0) -> None:
        self.folder = Path(folder)
        self.spec = spec
        self.windows = pair_windows(cache, spec, timeline, unit_context)
        self.shards = [load_file(str(p)) for p in sorted(self.folder.glob("pairs-*.safetensors"))]
        if sum(len(s["index"]) for s in self.shards) < spec.count:
            raise ValueError(f"{self.folder} is missing pairs; run the pair generation to completion first.")
        self.where = {int(i): (s, j) for s in self.shards for j, i in enumerate(s["index"].tolist())}

    def __len__(self) -> int:
        return self.spec.count

    def item(self, i: int, student_steps: int, k: int) -> tuple[dict, tuple, tuple, tuple[float, float]]:
        """Pair ``i``'s window, its state at student step ``k``, its final sample, and that state's times
        ``(video, audio)``."""
        shard, j = self.where[i]
        every = self.spec.record_steps // student_steps
        state = shard[f"video_{k * every}"][j], shard[f"audio_{k * every}"][j]
        target = shard["video_x0"][j], shard["audio_x0"][j]
        spec = self.spec
        t_audio = sampling_grid(student_steps, spec.shift, spec.start)[k].item()
        t_video = sampling_grid(student_steps, spec.shift, spec.video_start)[k].item()
        return self.windows[i], state, target, (t_video, t_audio)
