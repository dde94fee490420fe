"""Evaluation pair protocols: LFW-style random pairs, CFP-FP-style frontal-vs-profile, AgeDB-style
large age gaps.

Pairs are laid out like insightface's .bin files: `folds` contiguous blocks, each holding
`pairs_per_fold` same pairs followed by as many different pairs (KFold(10, shuffle=False) then splits
exactly at fold boundaries). Folds are identity-disjoint, as in LFW's View 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from face_pipelines.faceworld.config import (
    AgeProtocol,
    EvalConfig,
    PoseProtocol,
    RandomPairsProtocol,
)
from face_pipelines.faceworld.nuisance import sample_nuisances

__all__ = ["PROTOCOLS", "PairPlan", "plan_pairs"]

PROTOCOLS = ("fw_lfw", "fw_cfp", "fw_age")


@dataclass
class PairPlan:
    """Everything needed to render one protocol: pair k is images 2k (side a) and 2k+1 (side b)."""

    name: str
    fold: np.ndarray  # int [N]
    issame: np.ndarray  # bool [N]
    identity_a: np.ndarray  # int [N], index into the eval identities
    identity_b: np.ndarray  # int [N]
    image_identity: np.ndarray  # int [2N]: a, b, a, b, ...
    nuisances: dict[str, np.ndarray]  # [2N] per image, same interleaved order

    @property
    def n_pairs(self) -> int:
        """Number of pairs."""
        return len(self.issame)


def _pairs_for_folds(
    rng: np.random.Generator, n_ids: int, folds: int, per_fold: int
) -> tuple[np.ndarray, ...]:
    groups = np.array_split(rng.permutation(n_ids), folds)
    fold, same, ida, idb = [], [], [], []
    for f, grp in enumerate(groups):
        # same pairs cycle through the fold's identities so each is used about equally
        order = np.concatenate([rng.permutation(grp) for _ in range(-(-per_fold // len(grp)))])
        a_same = order[:per_fold]
        # different pairs: two distinct identities of the fold
        a_diff = rng.choice(grp, per_fold)
        b_diff = rng.choice(grp, per_fold)
        clash = a_diff == b_diff
        while clash.any():
            b_diff[clash] = rng.choice(grp, int(clash.sum()))
            clash = a_diff == b_diff
        fold.append(np.full(2 * per_fold, f))
        same.append(np.r_[np.ones(per_fold, bool), np.zeros(per_fold, bool)])
        ida.append(np.r_[a_same, a_diff])
        idb.append(np.r_[a_same, b_diff])
    return np.concatenate(fold), np.concatenate(same), np.concatenate(ida), np.concatenate(idb)


def plan_pairs(
    name: str,
    protocol: RandomPairsProtocol | PoseProtocol | AgeProtocol,
    eval_config: EvalConfig,
    identities: np.ndarray,
    rng: np.random.Generator,
) -> PairPlan:
    """Choose the pairs of one protocol and the nuisances of both images of every pair.

    Args:
        name: protocol name (fw_lfw, fw_cfp or fw_age).
        protocol: its config (folds, pairs per fold and the protocol's constraint).
        eval_config: the eval pool config (its nuisance distribution is the starting point).
        identities: eval identity matrix [n_ids, D].
        rng: the protocol's random stream.
    """
    fold, issame, ida, idb = _pairs_for_folds(
        rng, len(identities), protocol.folds, protocol.pairs_per_fold
    )
    n = len(issame)
    img_id = np.empty(2 * n, dtype=np.int64)
    img_id[0::2], img_id[1::2] = ida, idb
    nz = sample_nuisances(rng, 2 * n, eval_config.nuisances, identities[img_id])
    if isinstance(protocol, PoseProtocol):
        # side a frontal, side b large |yaw| (either direction)
        nz["yaw"][0::2] = rng.uniform(
            -protocol.frontal_max_yaw_deg, protocol.frontal_max_yaw_deg, n
        )
        mag = rng.uniform(*protocol.profile_yaw_deg, n)
        nz["yaw"][1::2] = mag * rng.choice([-1.0, 1.0], n)
    elif isinstance(protocol, AgeProtocol):
        lo, hi = protocol.age_range_years
        gap = protocol.min_age_gap_years
        young = rng.uniform(lo, hi - gap, n)
        old = rng.uniform(young + gap, hi)
        swap = rng.random(n) < 0.5
        nz["age"][0::2] = np.where(swap, old, young)
        nz["age"][1::2] = np.where(swap, young, old)
    return PairPlan(name, fold, issame, ida, idb, img_id, nz)
