"""The dataset card: how good a synthetic face dataset is, measured against the real subset.

Every identity measure uses features RE-EXTRACTED from the rendered images by the teacher, not the
vectors they were rendered from: what counts is what a recognizer sees in the pixels.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from face_pipelines.metrics.feature_probe import probe_summary
from face_pipelines.metrics.feature_stats import frechet_distance
from face_pipelines.metrics.separability import (
    identity_centres,
    intra_class_cosines,
    intra_class_summary,
    max_cosine_to_others,
    max_cosine_to_reference,
    separability_curve,
)
from face_pipelines.reporting.figures import plt
from face_pipelines.reporting.metrics import flat_metrics

log = logging.getLogger(__name__)

CURVE_TS = np.round(np.arange(0.30, 0.901, 0.05), 2)
YAW_BINS = np.arange(-90, 91, 10)


def _curve(centres: np.ndarray, device) -> dict[str, float]:
    return {f"{t:.2f}": v for t, v in separability_curve(centres, CURVE_TS, device=device).items()}


def build_dataset_card(
    synthetic_manifest: pd.DataFrame,
    synthetic_features: np.ndarray,
    real_features: np.ndarray,
    real_labels: np.ndarray,
    threshold: float,
    leakage_threshold: float,
    synthetic_yaw: np.ndarray,
    real_yaw: np.ndarray,
    render_report: dict,
    images_on_disk: int,
    seed: int = 0,
    device="cpu",
) -> dict:
    """Card dict (see the README's dataset-card section for every field)."""
    syn_labels = synthetic_manifest["identity"].to_numpy()
    syn_centres = identity_centres(synthetic_features, syn_labels)
    real_centres_all = identity_centres(real_features, real_labels)
    # Separability grows harder with more identities: compare on an equal number of identities.
    n = min(len(syn_centres), len(real_centres_all))
    rng = np.random.default_rng(seed)
    real_pick = np.sort(rng.choice(len(real_centres_all), size=n, replace=False))
    syn_pick = np.sort(rng.choice(len(syn_centres), size=n, replace=False))
    syn_best = max_cosine_to_others(syn_centres[syn_pick], device=device)
    real_best = max_cosine_to_others(real_centres_all[real_pick], device=device)
    syn_intra = intra_class_cosines(synthetic_features, syn_labels)
    real_intra = intra_class_cosines(real_features, real_labels)
    leak_cos, _ = max_cosine_to_reference(syn_centres, real_centres_all, device=device)

    card: dict = {
        "identities": int(len(syn_centres)),
        "images": int(len(synthetic_manifest)),
        "images_on_disk": int(images_on_disk),
        "threshold": float(threshold),
        "separability": float(np.mean(syn_best <= threshold)),
        "separability_real": float(np.mean(real_best <= threshold)),
        "separability_identities_compared": int(n),
        "separability_at_0_4": float(np.mean(syn_best <= 0.4)),
        "separability_at_0_4_real": float(np.mean(real_best <= 0.4)),
        "separability_curve": _curve(syn_centres[syn_pick], device),
        "separability_curve_real": _curve(real_centres_all[real_pick], device),
        "intra_class_cos_mean": float(syn_intra.mean()),
        "intra_class_cos_mean_real": float(real_intra.mean()),
        "intra_class_cos": intra_class_summary(syn_intra),
        "intra_class_cos_real": intra_class_summary(real_intra),
        "feature_fd": float(frechet_distance(real_features, synthetic_features)),
        "leakage_threshold": float(leakage_threshold),
        "leaked_identities": int(np.sum(leak_cos >= leakage_threshold)),
        "yaw_abs_mean": float(np.abs(synthetic_yaw).mean()),
        "yaw_abs_mean_real": float(np.abs(real_yaw).mean()),
        "yaw_beyond_30_fraction": float(np.mean(np.abs(synthetic_yaw) > 30)),
        "yaw_beyond_30_fraction_real": float(np.mean(np.abs(real_yaw) > 30)),
        "yaw_histogram": np.histogram(synthetic_yaw, YAW_BINS)[0].tolist(),
        "yaw_histogram_real": np.histogram(real_yaw, YAW_BINS)[0].tolist(),
        "yaw_histogram_bins": YAW_BINS.tolist(),
        "images_per_second": float(render_report.get("images_per_second", float("nan"))),
    }
    if "attrop" in synthetic_manifest and synthetic_manifest["attrop"].any():
        att = synthetic_manifest[synthetic_manifest["attrop"].astype(bool)]
        err = np.abs(np.abs(att["yaw_pred"].to_numpy()) - att["yaw_target"].to_numpy())
        card["attrop_images"] = int(len(att))
        card["attrop_yaw_success"] = float(np.mean(err <= 10.0))
        card["attrop_yaw_error_median_deg"] = float(np.median(err))
        card["attrop_met_rate"] = float(att["attrop_met"].astype(bool).mean())
        card["attrop_steps_mean"] = float(att["attrop_steps"].mean())
    card["checks"] = {
        "separability_at_least_real": card["separability"] >= card["separability_real"],
        "curve_at_least_real_everywhere": all(
            card["separability_curve"][t] >= card["separability_curve_real"][t]
            for t in card["separability_curve"]
        ),
        "intra_class_gap_within_0_05": abs(
            card["intra_class_cos_mean"] - card["intra_class_cos_mean_real"]
        )
        <= 0.05,
        "attrop_yaw_success_at_least_0_9": card.get("attrop_yaw_success", 0.0) >= 0.9,
        "images_on_disk_equal_card": card["images_on_disk"] == card["images"],
    }
    return card


GENERATOR_CARD_KEYS = (
    "ssim_mean",
    "judge_identity_cos_mean",
    "identity_cos_mean",
    "pixel_spread_generated",
    "pixel_spread_real",
    "yaw_corr",
    "yaw_abs_mean_generated",
    "yaw_abs_mean_real",
    "yaw_gt30_generated",
    "yaw_gt30_real",
)


def add_generator_quality(card: dict, vec2face_report: dict) -> dict:
    """The card plus the generator's held-out measures from its report (G(f) against the real
    image: SSIM, judge identity cos, pixel spread, the yaw a pose model reads off both), so a set's
    card says how well the generator that made it renders real faces."""
    found = {k: vec2face_report[k] for k in GENERATOR_CARD_KEYS if k in vec2face_report}
    return card if not found else {**card, "generator_heldout": found}


def add_feature_probe(card: dict, vec2face_report: dict) -> dict:
    """The card plus the vec2face report's "what the features carry" section (identity-disjoint
    probes of the teacher's raw features): a set whose generator could not see pose or lighting in
    its input vectors shows it here, next to the yaw measures it explains."""
    section = vec2face_report.get("feature_probe")
    return card if section is None else {**card, "feature_probe": section}


def add_pose_code_measures(
    card: dict, pose_success: dict, judge: dict, real_pose_success: dict | None = None
) -> dict:
    """The card of a pose-code generator's set (DR-GAN): the common card plus per-pose-bin success
    by the pose model (synthesis.pose_code.pose_bin_success) and identity kept by the judge.

    No AttrOP runs for such a set, so the AttrOP check is replaced by the pose-bin check (hit rate
    >= 0.8: the pose model puts at least 80% of the images in the bin they were generated for).
    `real_pose_success`: the same measure on real images with ground-truth bins - the pose model's
    own resolution, a ceiling for the generated set - as pose_bin_hit_rate_real (and per bin), and
    pose_bin_hit_rate_real_uniform, its per-bin mean (the ceiling for bins used equally often).
    """
    card = {**card, **pose_success, **judge}
    if real_pose_success is not None:
        per_bin = [r for r in real_pose_success["pose_bin_hit_rate_per_bin"] if r is not None]
        card["pose_bin_hit_rate_real"] = real_pose_success["pose_bin_hit_rate"]
        card["pose_bin_hit_rate_per_bin_real"] = real_pose_success["pose_bin_hit_rate_per_bin"]
        card["pose_bin_hit_rate_real_uniform"] = float(np.mean(per_bin))
    checks = {k: v for k, v in card["checks"].items() if not k.startswith("attrop_")}
    checks["pose_bin_hit_rate_at_least_0_8"] = pose_success["pose_bin_hit_rate"] >= 0.8
    card["checks"] = checks
    return card


def card_figure(
    card: dict, syn_intra: np.ndarray | None = None, real_intra: np.ndarray | None = None
):
    """Three panels: separability curves, yaw histograms, intra-class cosine summary."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100)
    ts = [float(t) for t in card["separability_curve"]]
    axes[0].plot(ts, list(card["separability_curve"].values()), "o-", label="synthetic")
    axes[0].plot(ts, list(card["separability_curve_real"].values()), "s--", label="real")
    axes[0].axvline(card["threshold"], color="grey", lw=0.8, ls=":", label="threshold")
    axes[0].set(
        xlabel="cosine threshold t", ylabel="separable identities", title="identity separability"
    )
    axes[0].legend(fontsize=8)
    bins = np.asarray(card["yaw_histogram_bins"])
    centres = (bins[:-1] + bins[1:]) / 2
    syn = np.asarray(card["yaw_histogram"], float)
    real = np.asarray(card["yaw_histogram_real"], float)
    axes[1].bar(centres - 2, syn / max(syn.sum(), 1), width=4, label="synthetic")
    axes[1].bar(centres + 2, real / max(real.sum(), 1), width=4, label="real")
    axes[1].set(xlabel="yaw (deg, pose model)", ylabel="fraction", title="yaw distribution")
    axes[1].legend(fontsize=8)
    names = ["q05", "q25", "median", "q75", "q95"]
    axes[2].plot(names, [card["intra_class_cos"][k] for k in names], "o-", label="synthetic")
    axes[2].plot(names, [card["intra_class_cos_real"][k] for k in names], "s--", label="real")
    axes[2].set(ylabel="cosine to identity centre", title="intra-class variation")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def card_outputs(card: dict) -> tuple[dict, dict, plt.Figure, dict[str, float]]:
    """What every synthetic set's card node returns, whatever the generator: the card twice (for
    data/08_reporting and for the dataset root, so a dataset folder - or a DVC revision of it -
    carries its own card), its figure and its numbers as MLflow metrics. Logs the card's summary.
    """
    log.info("\n%s", card_summary(card))
    metrics = flat_metrics(
        {k: v for k, v in card.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    )
    return card, card, card_figure(card), metrics


def card_summary(card: dict) -> str:
    """A few lines for the console at the end of `kedro run --pipelines synth`."""
    lines = [
        "Synthetic dataset card",
        f"  identities {card['identities']}, images {card['images']} "
        f"(on disk {card['images_on_disk']}), {card['images_per_second']:.0f} img/s rendering",
        f"  separability @ t={card['threshold']:.3f}: {card['separability']:.3f} "
        f"(real {card['separability_real']:.3f}); @0.4: {card['separability_at_0_4']:.3f} "
        f"(real {card['separability_at_0_4_real']:.3f})",
        f"  intra-class cos mean: {card['intra_class_cos_mean']:.3f} "
        f"(real {card['intra_class_cos_mean_real']:.3f})",
        f"  |yaw| mean: {card['yaw_abs_mean']:.1f} deg (real {card['yaw_abs_mean_real']:.1f}); "
        f">30 deg: {card['yaw_beyond_30_fraction']:.3f} (real {card['yaw_beyond_30_fraction_real']:.3f})",
        f"  feature_fd (teacher space): {card['feature_fd']:.3f}; leaked identities: "
        f"{card['leaked_identities']}",
    ]
    if "attrop_yaw_success" in card:
        lines.append(
            f"  AttrOP: {card['attrop_images']} images, yaw success (<=10 deg) "
            f"{card['attrop_yaw_success']:.3f}, mean steps {card['attrop_steps_mean']:.1f}"
        )
    if "pose_bin_hit_rate" in card:
        per_bin = ", ".join(
            "-" if r is None else f"{r:.2f}" for r in card["pose_bin_hit_rate_per_bin"]
        )
        lines.append(
            f"  pose codes: hit rate {card['pose_bin_hit_rate']:.3f} (within one bin "
            f"{card['pose_bin_within_one_rate']:.3f}); per bin: {per_bin}"
        )
        if "pose_bin_hit_rate_real" in card:
            lines.append(
                f"  pose model on real images: hit rate {card['pose_bin_hit_rate_real']:.3f} "
                f"(per-bin mean {card['pose_bin_hit_rate_real_uniform']:.3f})"
            )
    if "judge_identity_cos_mean" in card:
        lines.append(
            f"  judge identity cos (re-rendered real): {card['judge_identity_cos_mean']:.3f}"
        )
    if "generator_heldout" in card:
        g = card["generator_heldout"]
        parts = [
            f"{label} {g[k]:.3f}"
            for label, k in (
                ("SSIM", "ssim_mean"),
                ("judge cos", "judge_identity_cos_mean"),
                ("yaw corr", "yaw_corr"),
            )
            if k in g
        ]
        if "pixel_spread_generated" in g and "pixel_spread_real" in g:
            parts.append(
                f"pixel spread {g['pixel_spread_generated']:.3f} (real {g['pixel_spread_real']:.3f})"
            )
        lines.append(f"  generator on held-out faces: {', '.join(parts)}")
    if card.get("feature_probe", {}).get("probes"):
        lines.append(f"  teacher features carry: {probe_summary(card['feature_probe'], limit=6)}")
    failed = [k for k, ok in card["checks"].items() if not ok]
    lines.append("  checks: all passed" if not failed else f"  checks not met: {', '.join(failed)}")
    return "\n".join(lines)


# The card measures and recipe knobs that tell synthetic datasets apart in a run comparison.
_PROVENANCE_MEASURES = (
    "identities",
    "images",
    "threshold",
    "separability",
    "intra_class_cos_mean",
    "feature_fd",
    "attrop_images",
    "attrop_yaw_success",
    "leaked_identities",
)


def dataset_provenance(card: dict) -> dict[str, float]:
    """Numbers that identify the synthetic set a recognizer was trained on, for MLflow metrics.

    The evaluate pipeline logs them next to the accuracies (as `dataset.<key>`), so a comparison of
    evaluate runs shows which dataset each came from without joining runs of other pipelines:
    the card's size and quality measures, plus from its recipe the sigma mix's mean
    (`sigma_mean`, sum of sigma x proportion), the calibration quantile and whether AttrOP ran.
    Missing or non-numeric entries are left out.
    """
    out: dict[str, float] = {}
    for key in _PROVENANCE_MEASURES:
        value = card.get(key)
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and np.isfinite(value):
            out[key] = float(value)
    params = card.get("parameters") or {}
    sample = ((params.get("sample") or {}).get("config")) or {}
    mix = sample.get("sigma_mix")
    if mix:
        weights = np.array([float(p) for _, p in mix])
        sigmas = np.array([float(s) for s, _ in mix])
        if weights.sum() > 0:
            out["sigma_mean"] = float((sigmas * weights).sum() / weights.sum())
    if isinstance(sample.get("calibration_quantile"), int | float):
        out["calibration_quantile"] = float(sample["calibration_quantile"])
    render = params.get("render") or {}
    if "attrop_enabled" in render:
        out["attrop_enabled"] = float(bool(render["attrop_enabled"]))
    return out
