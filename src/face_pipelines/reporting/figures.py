"""Figures for reports and MLflow (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def images_per_identity_figure(manifest: pd.DataFrame, title: str = "images per identity"):
    """Histogram of images per identity of a manifest."""
    counts = manifest.groupby("identity").size().to_numpy()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    bins = (
        np.arange(counts.min(), counts.max() + 2) - 0.5 if counts.max() - counts.min() < 60 else 40
    )
    ax.hist(counts, bins=bins, color="#4c72b0", edgecolor="white")
    ax.set_xlabel("images per identity")
    ax.set_ylabel("identities")
    ax.set_title(f"{title} (n={len(counts)}, images={counts.sum()})")
    fig.tight_layout()
    return fig


def image_figure(image: np.ndarray, title: str = "", dpi: int = 100):
    """A matplotlib figure showing one uint8 image at its native resolution."""
    h, w = image.shape[:2]
    fig = plt.figure(figsize=(w / dpi, h / dpi + (0.3 if title else 0)), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, h / (h + (30 if title else 0))])
    ax.imshow(image, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8, y=0.995)
    return fig


def ablation_figure(table: dict, title: str = "recognizer ablation"):
    """Grouped bars: accuracy (%) per benchmark and mean, one group per (variant, training set)."""
    benches = list(table["benchmarks"])
    rows = table["rows"]
    cols = [*benches, "mean"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.4), dpi=100)
    width = 0.8 / len(cols)
    x = np.arange(len(rows))
    lows = []
    for j, col in enumerate(cols):
        vals = np.array(
            [
                100 * (r["mean_accuracy"] if col == "mean" else r["accuracy"][col]["mean"])
                for r in rows
            ]
        )
        lows.append(vals.min())
        bars = ax.bar(x + (j - (len(cols) - 1) / 2) * width, vals, width, label=col)
        if col == "mean":
            for b, v in zip(bars, vals, strict=True):
                ax.annotate(
                    f"{v:.1f}",
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(x, [f"{r['variant']}\n{r['dataset']}" for r in rows], fontsize=8)
    ax.set_ylim(max(0.0, min(lows) - 5), 100)
    ax.set_ylabel("verification accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=len(cols), loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def roc_figure(
    curves: dict[str, dict[str, dict]],
    impostor_pairs: dict[str, int],
    fars: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1),
    title: str = "verification ROC",
):
    """One panel per benchmark, one ROC per recognizer, FAR on a log scale.

    curves: {recognizer: {benchmark: {"far": [...], "tar": [...]}}}; impostor_pairs: per benchmark.
    FARs below 1 / impostor_pairs (less than one false accept) are shaded: the curve there rests
    on no impostor pair. Dotted lines mark the reported FAR levels.
    """
    benches = list(impostor_pairs)
    fig, axes = plt.subplots(
        1, len(benches), figsize=(3.6 * len(benches), 3.4), dpi=100, squeeze=False
    )
    for ax, bench in zip(axes[0], benches, strict=True):
        floor = 1.0 / impostor_pairs[bench]
        low = min(fars[0], floor) / 2
        for rec, per_bench in curves.items():
            # FAR 0 has no place on a log axis: the TAR reached before the first false accept
            # is drawn at the left edge.
            far = np.maximum(np.asarray(per_bench[bench]["far"]), low)
            ax.plot(far, per_bench[bench]["tar"], label=rec, lw=1.4)
        ax.axvspan(low, floor, color="0.85", lw=0, label="< 1 impostor pair")
        for far in fars:
            ax.axvline(far, color="0.6", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlim(low, 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("FAR (false accept rate)")
        ax.set_title(f"{bench} ({impostor_pairs[bench]} impostor pairs)", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("TAR (true accept rate)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
