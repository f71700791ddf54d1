"""Training curves as PNG (matplotlib, headless): the held-out figures of `curve.json` against the step."""

from __future__ import annotations

from pathlib import Path

LABELS = {
    "video": "video velocity MSE (text -> speech + video)",
    "audio": "audio velocity MSE (text -> speech + video)",
    "video_audio_driven": "video velocity MSE (given speech -> video)",
    "loss": "unit LM cross-entropy (nats/token)",
    "unit_accuracy": "next-unit accuracy, teacher forced",
    "phoneme_accuracy": "next-phoneme accuracy, teacher forced",
}


def plot_curve(
    curve: list[dict],
    path: str | Path,
    title: str,
    keys: tuple[str, ...] = tuple(LABELS),
    ylabel: str = "held-out loss",
) -> Path:
    """One line per key of ``curve`` (a list of ``{"step": ..., key: value}``) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [point["step"] for point in curve]
    for key in keys:
        if curve and key in curve[0]:
            ax.plot(
                steps, [point[key] for point in curve], marker="o", markersize=3, label=LABELS.get(key, key)
            )
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
