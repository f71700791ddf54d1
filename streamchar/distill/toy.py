"""DMD on a toy that cannot lie: a 2D Gaussian mixture, a flow-matching teacher, a one-step student.

The mixture has ``modes`` Gaussians on a circle; even modes are class 0, odd modes class 1. A small
MLP teacher learns the class-conditional velocity field by flow matching (labels dropped 10% of the
time, so classifier-free guidance works). Sampled in one Euler step, the teacher lands near the
class mean, between the modes: that is the student before distillation. DMD then trains the
one-step student with the same :mod:`streamchar.distill.losses` the video model uses (real score =
the teacher with guidance, fake score trained online on the student's samples), and the report
compares each sampler with the teacher's own many-step samples: the mass on each mode, the fraction
of samples that land on a mode at all, and the maximum mean discrepancy (MMD).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from streamchar.distill.losses import dmd_loss, flow_matching_loss


@dataclass(frozen=True)
class ToyConfig:
    modes: int = 8
    radius: float = 2.0
    std: float = 0.08
    guidance: float = 1.5  # the real score's classifier-free guidance scale
    teacher_steps: int = 3000
    teacher_sample_steps: int = 64
    student_steps: int = 3000
    fake_updates: int = 4  # fake-score updates per student update (two time-scale updates)
    batch: int = 512
    lr_teacher: float = 2e-3
    lr_student: float = 2e-4
    lr_fake: float = 1e-3
    t_min: float = 0.02
    t_max: float = 0.98
    eval_samples: int = 4000
    seed: int = 0


class ToyFlow(nn.Module):
    """Class-conditional velocity MLP: ``(x [B, 2], t [B], label [B])`` -> ``[B, 2]``; label 2 is null."""

    def __init__(self, width: int = 256, classes: int = 2) -> None:
        super().__init__()
        self.null = classes
        self.label = nn.Embedding(classes + 1, width)
        self.time = nn.Linear(32, width)
        self.inp = nn.Linear(2, width)
        self.net = nn.Sequential(
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 2),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.linspace(0, math.log(1000.0), 16, device=x.device))
        angles = t[:, None] * freqs[None] * math.pi
        time = torch.cat([angles.sin(), angles.cos()], dim=1)
        return self.net(self.inp(x) + self.time(time) + self.label(label))


def mixture_centres(cfg: ToyConfig) -> torch.Tensor:
    angles = torch.arange(cfg.modes) * (2 * math.pi / cfg.modes)
    return cfg.radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def sample_mixture(cfg: ToyConfig, n: int, label: int | None, generator: torch.Generator):
    """``n`` points and their labels; ``label`` None mixes both classes."""
    labels = torch.randint(0, 2, (n,), generator=generator) if label is None else torch.full((n,), label)
    which = 2 * torch.randint(0, cfg.modes // 2, (n,), generator=generator) + labels
    return mixture_centres(cfg)[which] + cfg.std * torch.randn(n, 2, generator=generator), labels


def guided(model: ToyFlow, x, t, label, scale: float) -> torch.Tensor:
    v = model(x, t, label)
    if scale == 1.0:
        return v
    return v + (scale - 1) * (v - model(x, t, torch.full_like(label, model.null)))


@torch.no_grad()
def euler(model: ToyFlow, noise, label, steps: int, scale: float) -> torch.Tensor:
    x = noise
    grid = torch.linspace(1.0, 0.0, steps + 1)
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        x = x + (t_next - t) * guided(model, x, torch.full((len(x),), t), label, scale)
    return x


def train_teacher(cfg: ToyConfig) -> ToyFlow:
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = ToyFlow()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_teacher)
    for step in range(cfg.teacher_steps):
        x0, label = sample_mixture(cfg, cfg.batch, None, g)
        label = torch.where(torch.rand(cfg.batch, generator=g) < 0.1, model.null, label)
        t, noise = torch.rand(cfg.batch, generator=g), torch.randn(cfg.batch, 2, generator=g)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
        loss = flow_matching_loss(model(x_t, t, label), x0, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = cfg.lr_teacher * 0.5 * (1 + math.cos(math.pi * (step + 1) / cfg.teacher_steps))
    return model.eval().requires_grad_(False)


def one_step(student: ToyFlow, noise, label) -> torch.Tensor:
    """The one-step sampler with a graph: ``x0 = noise - v(noise, 1)``."""
    return noise - student(noise, torch.ones(len(noise)), label)


def distil_dmd(cfg: ToyConfig, teacher: ToyFlow, log: list | None = None) -> ToyFlow:
    """DMD from the teacher into a one-step student initialised as the teacher."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    student, fake = copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher).requires_grad_(True)
    student.train(), fake.train()
    opt_s = torch.optim.Adam(student.parameters(), lr=cfg.lr_student, betas=(0.0, 0.99))
    opt_f = torch.optim.Adam(fake.parameters(), lr=cfg.lr_fake, betas=(0.0, 0.99))
    span = cfg.t_max - cfg.t_min
    for step in range(cfg.student_steps):
        label = torch.randint(0, 2, (cfg.batch,), generator=g)
        x0 = one_step(student, torch.randn(cfg.batch, 2, generator=g), label)
        t = cfg.t_min + span * torch.rand(cfg.batch, generator=g)
        x_t = (1 - t[:, None]) * x0.detach() + t[:, None] * torch.randn(cfg.batch, 2, generator=g)
        with torch.no_grad():
            real = x_t - t[:, None] * guided(teacher, x_t, t, label, cfg.guidance)
            fake_x0 = x_t - t[:, None] * fake(x_t, t, label)
        loss = dmd_loss(x0, real, fake_x0).mean()
        opt_s.zero_grad()
        loss.backward()
        for group in opt_s.param_groups:  # cosine decay: the last steps sharpen the modes
            group["lr"] = cfg.lr_student * 0.5 * (1 + math.cos(math.pi * step / cfg.student_steps))
        opt_s.step()
        samples = x0.detach()
        for _ in range(cfg.fake_updates):
            t = cfg.t_min + span * torch.rand(cfg.batch, generator=g)
            noise = torch.randn(cfg.batch, 2, generator=g)
            x_t = (1 - t[:, None]) * samples + t[:, None] * noise
            fake_loss = flow_matching_loss(fake(x_t, t, label), samples, noise).mean()
            opt_f.zero_grad()
            fake_loss.backward()
            opt_f.step()
        if log is not None and (step + 1) % 100 == 0:
            log.append(
                {"step": step + 1, "dmd": round(loss.item(), 6), "fake_flow": round(fake_loss.item(), 5)}
            )
    return student.eval().requires_grad_(False)


# -- measures ----------------------------------------------------------------------------------------
def mode_mass(cfg: ToyConfig, x: torch.Tensor) -> tuple[list[float], float]:
    """Fraction of samples on each mode (within 4 std of its centre) and the fraction on none."""
    d = torch.cdist(x, mixture_centres(cfg))
    nearest, dist = d.argmin(1), d.min(1).values
    on = dist < 4 * cfg.std
    mass = [float(((nearest == k) & on).float().mean()) for k in range(cfg.modes)]
    return mass, float((~on).float().mean())


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.05, 0.2, 1.0)) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels."""

    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    xx = (kxx.sum() - kxx.diag().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def run_toy(cfg: ToyConfig, out: str | Path | None = None) -> dict:
    """Train the teacher, distil the student, measure; writes ``toy.json`` and ``toy.png`` to ``out``."""
    teacher = train_teacher(cfg)
    log: list = []
    student = distil_dmd(cfg, teacher, log)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    n = cfg.eval_samples
    label = torch.arange(n) % 2
    noise = torch.randn(n, 2, generator=g)
    samples = {
        "teacher": euler(teacher, noise, label, cfg.teacher_sample_steps, cfg.guidance),
        "before (teacher, 1 step)": euler(teacher, noise, label, 1, cfg.guidance),
        "student (DMD, 1 step)": one_step(student, noise, label).detach(),
    }
    reference = samples["teacher"]
    other_noise = torch.randn(n, 2, generator=g)
    rows = {}
    for name, x in samples.items():
        mass, off = mode_mass(cfg, x)
        rows[name] = {"mode_mass": [round(m, 4) for m in mass], "off_mode": round(off, 4)}
        if name != "teacher":
            rows[name]["mmd_to_teacher"] = round(mmd(x, reference), 5)
            rows[name]["max_mode_mass_error"] = round(
                max(abs(a - b) for a, b in zip(mass, mode_mass(cfg, reference)[0], strict=True)), 4
            )
    # the noise floor: the teacher against itself from other noise
    rows["teacher"]["mmd_to_teacher"] = round(
        mmd(euler(teacher, other_noise, label, cfg.teacher_sample_steps, cfg.guidance), reference), 5
    )
    result = {"config": asdict(cfg), "samplers": rows, "log": log}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "toy.json").write_text(json.dumps(result, indent=1) + "\n")
        _plot(cfg, samples, rows, out / "toy.png")
    return result


def _plot(cfg: ToyConfig, samples: dict, rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4.2))
    lim = cfg.radius * 1.6
    for ax, (name, x) in zip(axes, samples.items(), strict=True):
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.4)
        c = mixture_centres(cfg)
        ax.scatter(c[:, 0], c[:, 1], marker="x", c="k", s=30)
        r = rows[name]
        ax.set_title(f"{name}\nMMD {r['mmd_to_teacher']:.4f}, off-mode {r['off_mode']:.1%}", fontsize=9)
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
