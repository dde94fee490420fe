"""A minimal dataset card: every number `card_summary` prints, set to 1, and no checks."""

CARD_NUMBERS = (
    "identities",
    "images",
    "images_on_disk",
    "images_per_second",
    "threshold",
    "separability",
    "separability_real",
    "separability_at_0_4",
    "separability_at_0_4_real",
    "intra_class_cos_mean",
    "intra_class_cos_mean_real",
    "yaw_abs_mean",
    "yaw_abs_mean_real",
    "yaw_beyond_30_fraction",
    "yaw_beyond_30_fraction_real",
    "feature_fd",
    "leaked_identities",
)


def minimal_card() -> dict:
    return dict.fromkeys(CARD_NUMBERS, 1) | {"checks": {}}
