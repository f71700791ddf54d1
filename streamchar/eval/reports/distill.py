"""The distillation measures' reports (``streamchar distill compare`` and ``distill drift``): Markdown tables
and the drift plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def compare_table(result: dict) -> str:
    lines = [
        f"Reference: `{result['reference']}`; {result['windows']} held-out windows ({result['split']} split), same "
        f"noise; mouth probe on ground-truth latents r = {result['mouth_probe_r_ground_truth_latents']}.",
        "",
        "| sampler | steps x branches | s / window | speed-up | video MSE to ref | audio MSE to ref | "
        "video MSE to truth | mouth probe r | held-out flow loss (video / audio) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["samplers"].items():
        f = r["heldout_flow_loss"]
        lines.append(
            f"| {name} | {r['steps']} x {r['branches']} | {r['seconds_per_window']:.3f} | "
            f"{r['speedup_vs_reference']:.1f}x | {r['video_mse_to_reference']:.4f} | "
            f"{r['audio_mse_to_reference']:.4f} | {r['video_mse_to_ground_truth']:.4f} | "
            f"{r['mouth_probe_r']} | {f['video']:.4f} / {f['audio']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def drift_table(result: dict) -> str:
    seg = result["segment_chunks"]
    lines = [
        f"Per segment of {seg} chunks ({seg * result['chunk_seconds']:.1f} s): identity L1 to the reference "
        "(0-255, lower is closer) / sharpness ratio / colour-spread ratio (1 = like the ground truth).",
        "",
    ]
    names = list(result["segments"])
    n = len(result["segments"][names[0]])
    lines.append("| model | " + " | ".join(f"chunks {i * seg}-{(i + 1) * seg - 1}" for i in range(n)) + " |")
    lines.append("|---|" + "---|" * n)
    for name in names:
        cells = [f"{s['identity_l1']:.1f} / {s['sharpness_ratio']:.2f} / {s['colour_spread_ratio']:.2f}"
                 for s in result["segments"][name]]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_drift(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("identity_l1", "sharpness_ratio", "colour_spread_ratio")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, m in zip(axes, metrics, strict=True):
        for name, cv in result["curves"].items():
            ax.plot(np.arange(len(cv[m])) * result["chunk_seconds"], cv[m], label=name, lw=1.2)
        ax.set_xlabel("session time (s)")
        ax.set_title(m.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
