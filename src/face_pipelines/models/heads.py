"""Margin softmax heads (ArcFace, CosFace, MagFace) with PartialFC-style class sampling.

All heads compare L2-normalised embeddings with L2-normalised class centres (cosines), replace the
true class's cosine by a margin version, scale by `s` and apply softmax cross-entropy.

Scale (PartialFC): with `sample_rate < 1` each training step keeps every class present in the batch
plus random negatives up to `ceil(sample_rate * C)` classes and computes logits only over those.
Under `torch.distributed` (auto-detected, or `shard_classes=True`) the class centres are sharded
over ranks (rank r holds a contiguous block of about C / world classes); embeddings and labels are
gathered from all ranks (the gather keeps gradients) and the softmax is computed across shards with
an all_reduce of the per-sample max and sum, so no rank ever materialises [N, C] logits.

Outputs (a dict) are over the *global* batch: with one process that is just the batch [B]; when
sharded it is every rank's samples concatenated in rank order [N], identical on every rank, and
`out["local_slice"]` selects this rank's samples. `loss` is the mean over that global batch, so it
has the same value on every rank and equals the single-process loss on the concatenated batch.

Gradients when sharded are those of J = the mean over ranks of the loss each rank backpropagates:
`out["loss"]` (same on every rank, J = loss), a weighted `(w * out["per_sample_loss"]).mean()` with
`w` computed from these global outputs, or a rank's own `per_sample_loss[local_slice].mean()` all
work. Class centres receive exactly dJ/d(weight); the gather multiplies the gradient of the local
embeddings by the world size so that a DDP-wrapped backbone (DDP averages over ranks) receives
exactly dJ/d(backbone). Do not wrap a sharded head in DDP: each rank owns its shard (use
`full_weight` / `load_full_weight` for checkpoints).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from face_pipelines.errors import DataError, ParameterError

# ---------------------------------------------------------------------------------------------
# Collectives with gradients
# ---------------------------------------------------------------------------------------------


_NO_GROUP = object()  # marker: single process, collectives are identities


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if group is not _NO_GROUP:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward scales the gradient (for terms every rank computes redundantly)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of differing counts; backward sums the gradient over ranks and keeps ours.

    The returned gradient is multiplied by the world size to cancel DDP's averaging (module doc).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: list[int], rank: int, group) -> torch.Tensor:
        world = len(counts)
        max_count = max(counts)
        padded = local.new_zeros((max_count, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.counts, ctx.rank, ctx.group = counts, rank, group
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.counts[: ctx.rank])
        local_grad = grad[start : start + ctx.counts[ctx.rank]] * len(ctx.counts)
        return local_grad, None, None, None


def _gather_labels(labels: torch.Tensor, counts: list[int], group) -> torch.Tensor:
    max_count = max(counts)
    padded = labels.new_full((max_count,), -1)
    padded[: labels.shape[0]] = labels
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)


class _ShardedSoftmaxCrossEntropy(torch.autograd.Function):
    """Per-sample softmax cross-entropy when the class axis is split over ranks.

    Forward: logits [N, K_local] and the local column of each sample's true class (-1 if the true
    class lives on another rank). Returns per-sample loss [N], p_gt [N] and entropy [N], identical
    on every rank. Backward: d loss_i / d z_ic = p_ic - [c == y_i] for the local columns, times the
    upstream gradient averaged over ranks - so the objective is the mean over ranks of each rank's
    loss.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, local_target: torch.Tensor, group):
        logits = logits.float()
        n = logits.shape[0]
        if logits.shape[1] > 0:
            row_max = logits.max(dim=1).values
        else:
            row_max = logits.new_full((n,), -torch.inf)
        _all_reduce(row_max, dist.ReduceOp.MAX, group)
        exp = torch.exp(logits - row_max[:, None])
        # One all_reduce carries the sum of exps, the exp-weighted logit sum (for entropy) and the
        # target logit (0 on ranks that do not hold the true class).
        has_target = local_target >= 0
        target_logit = torch.zeros(n, dtype=logits.dtype, device=logits.device)
        rows = torch.nonzero(has_target).squeeze(1)
        target_logit[rows] = logits[rows, local_target[rows]]
        packed = torch.stack([exp.sum(dim=1), (exp * logits).sum(dim=1), target_logit])
        _all_reduce(packed, dist.ReduceOp.SUM, group)
        sum_exp, weighted_logit, target_logit = packed
        log_z = torch.log(sum_exp) + row_max
        per_sample = log_z - target_logit
        p_gt = torch.exp(target_logit - log_z)
        entropy = log_z - weighted_logit / sum_exp
        ctx.save_for_backward(exp / sum_exp[:, None], local_target)
        ctx.group = group
        ctx.mark_non_differentiable(p_gt, entropy)
        return per_sample, p_gt, entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_p, _grad_h):
        probs, local_target = ctx.saved_tensors
        if ctx.group is not _NO_GROUP:
            grad_loss = grad_loss.contiguous().clone()
            dist.all_reduce(grad_loss, op=dist.ReduceOp.SUM, group=ctx.group)
            grad_loss /= dist.get_world_size(ctx.group)
        grad = probs.clone()
        rows = torch.nonzero(local_target >= 0).squeeze(1)
        grad[rows, local_target[rows]] -= 1.0
        return grad * grad_loss[:, None], None, None


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------


class MarginHead(nn.Module):
    """Base class: normalised-softmax head over `num_classes` centres with a target-logit margin.

    Args:
        embedding_dim: embedding dimension D.
        num_classes: number of identities C (over all ranks).
        s: logit scale.
        sample_rate: PartialFC class sampling rate in (0, 1]; 1 = all classes every step. Sampling
            only happens in training mode; eval mode always uses every class.
        shard_classes: shard the centres over torch.distributed ranks. None = automatic (sharded
            when a process group with world size > 1 is initialised).
        process_group: process group for sharding (default: the global group).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        s: float = 64.0,
        sample_rate: float = 1.0,
        shard_classes: bool | None = None,
        process_group=None,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ParameterError(
                f"margin head needs embedding_dim >= 1 and num_classes >= 1, got {embedding_dim}, "
                f"{num_classes}"
            )
        if not 0.0 < sample_rate <= 1.0:
            raise ParameterError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if s <= 0:
            raise ParameterError(f"margin head scale s must be > 0, got {s}")
        if shard_classes is None:
            shard_classes = dist.is_available() and dist.is_initialized()
            shard_classes = shard_classes and dist.get_world_size(process_group) > 1
        if shard_classes:
            if not (dist.is_available() and dist.is_initialized()):
                raise ParameterError(
                    "shard_classes=True needs an initialised torch.distributed group"
                )
            self.world_size = dist.get_world_size(process_group)
            self.rank = dist.get_rank(process_group)
        else:
            self.world_size, self.rank = 1, 0
        if num_classes < self.world_size:
            raise ParameterError(
                f"num_classes ({num_classes}) must be >= world size ({self.world_size})"
            )
        self.sharded = bool(shard_classes)
        self.process_group = process_group
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.s = float(s)
        self.sample_rate = float(sample_rate)
        base, extra = divmod(self.num_classes, self.world_size)
        self.num_local = base + int(self.rank < extra)
        self.class_start = base * self.rank + min(self.rank, extra)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_local, self.embedding_dim)))

    # -- margin definition (subclasses) ---------------------------------------------------------
    def target_cosine(self, cos_target: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Return the margin-modified cosine of the true class (cos_target, norms: [n])."""
        raise NotImplementedError

    def regulariser(self, norms: torch.Tensor) -> torch.Tensor:
        """Per-sample extra loss term from the embedding norms [N] (zero unless overridden)."""
        return torch.zeros_like(norms)

    # -- full centre matrix (checkpoints) --------------------------------------------------------
    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """The whole [C, D] centre matrix; when sharded, gathered from every rank (a collective)."""
        if not self.sharded:
            return self.weight.detach().clone()
        base, extra = divmod(self.num_classes, self.world_size)
        counts = [base + int(r < extra) for r in range(self.world_size)]
        padded = self.weight.new_zeros((max(counts), self.embedding_dim))
        padded[: self.num_local] = self.weight
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded, group=self.process_group)
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor) -> None:
        """Set this rank's shard from a whole [C, D] centre matrix (e.g. from `full_weight`)."""
        if tuple(weight.shape) != (self.num_classes, self.embedding_dim):
            raise DataError(
                f"class centres must have shape ({self.num_classes}, {self.embedding_dim}), "
                f"got {tuple(weight.shape)}"
            )
        self.weight.copy_(weight[self.class_start : self.class_start + self.num_local])

    # -- sampling ----------------------------------------------------------------------------------
    def _sample_classes(self, local_labels: torch.Tensor) -> torch.Tensor:
        """Indices (into the local shard, sorted) of the classes used this step."""
        num_sample = math.ceil(self.sample_rate * self.num_local)
        if not self.training or self.sample_rate >= 1.0 or num_sample >= self.num_local:
            return torch.arange(self.num_local, device=self.weight.device)
        positives = torch.unique(local_labels[local_labels >= 0])
        if positives.numel() >= num_sample:
            return positives
        score = torch.rand(self.num_local, device=self.weight.device)
        score[positives] = 2.0  # positives rank above every random negative
        return torch.sort(torch.topk(score, num_sample).indices).values

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
        """Margin softmax loss of raw embeddings [B, D] with integer labels [B] in [0, C).

        Returns a dict: `loss` (scalar, mean over the global batch), `per_sample_loss` [N],
        `logits` [N, K] (scaled margin logits over the K classes used, on this rank's shard),
        `class_index` [K] (global class id of each logits column), `p_gt` [N] (softmax probability
        of the true class, a float in [0, 1]), `entropy` [N] (entropy of that softmax), `norms` [N]
        (embedding norms) and `local_slice` (this rank's rows). N = B with one process.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise DataError(
                f"margin head expected embeddings of shape [B, {self.embedding_dim}], "
                f"got {tuple(embeddings.shape)}"
            )
        labels = labels.reshape(-1).long()
        if labels.shape[0] != embeddings.shape[0]:
            raise DataError(
                f"margin head got {embeddings.shape[0]} embeddings but {labels.shape[0]} labels"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise DataError(
                f"labels must lie in [0, {self.num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )

        if self.sharded:
            group = self.process_group
            count = torch.tensor([embeddings.shape[0]], device=embeddings.device)
            counts_t = [torch.empty_like(count) for _ in range(self.world_size)]
            dist.all_gather(counts_t, count, group=group)
            counts = [int(c) for c in counts_t]
            all_embeddings = _GatherWithGrad.apply(embeddings, counts, self.rank, group)
            all_labels = _gather_labels(labels, counts, group)
            start = sum(counts[: self.rank])
            local_slice = slice(start, start + counts[self.rank])
        else:
            group = _NO_GROUP
            all_embeddings, all_labels = embeddings, labels
            local_slice = slice(0, embeddings.shape[0])

        # Labels relative to this shard; -1 where the true class lives on another rank.
        in_shard = (all_labels >= self.class_start) & (
            all_labels < self.class_start + self.num_local
        )
        shard_labels = torch.where(in_shard, all_labels - self.class_start, -1)
        sampled = self._sample_classes(shard_labels)
        # Map shard label -> column in the sampled logits (every positive is sampled).
        column_of = torch.full((self.num_local,), -1, dtype=torch.long, device=sampled.device)
        column_of[sampled] = torch.arange(sampled.numel(), device=sampled.device)
        local_target = torch.where(in_shard, column_of[shard_labels.clamp(min=0)], -1)

        # Margins on cosines near +-1 need fp32; the caller's autocast region must not reach here.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings_f = all_embeddings.float()
            norms = embeddings_f.norm(dim=1)
            centres = F.normalize(self.weight[sampled].float(), dim=1)
            cosine = F.linear(F.normalize(embeddings_f, dim=1), centres).clamp(-1.0, 1.0)
            rows = torch.nonzero(local_target >= 0).squeeze(1)
            cols = local_target[rows]
            margin_cos = self.target_cosine(cosine[rows, cols], norms[rows])
            # Out-of-place scatter keeps autograd through both the plain and the margin cosines.
            cosine = cosine.index_put((rows, cols), margin_cos)
            logits = cosine * self.s
            ce, p_gt, entropy = _ShardedSoftmaxCrossEntropy.apply(logits, local_target, group)
            # Every rank computes the norm term of every sample: count its gradient once in total.
            reg_norms = _ScaleGrad.apply(norms, 1.0 / self.world_size) if self.sharded else norms
            per_sample = ce + self.regulariser(reg_norms)
        return {
            "loss": per_sample.mean(),
            "per_sample_loss": per_sample,
            "logits": logits,
            "class_index": sampled + self.class_start,
            "p_gt": p_gt,
            "entropy": entropy,
            "norms": norms.detach(),
            "local_slice": local_slice,
        }


def _arc_margin_cosine(cos_t: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """cos(theta + m) where theta + m <= pi, else the monotone fallback cos(theta) - m*sin(m)."""
    m = torch.as_tensor(m, dtype=cos_t.dtype, device=cos_t.device)
    # clamp keeps d sqrt / d cos finite at cos = +-1
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp(min=1e-7))
    cos_t_m = cos_t * torch.cos(m) - sin_t * torch.sin(m)
    fallback = cos_t - m * torch.sin(m)
    return torch.where(cos_t > torch.cos(math.pi - m), cos_t_m, fallback)


class ArcFaceHead(MarginHead):
    """ArcFace (additive angular margin), classic form with the theta + m > pi fallback.

    Args: see `MarginHead`; m: angular margin in radians (default 0.5), s default 64.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5, **kwargs
    ):
        super().__init__(embedding_dim, num_classes, s=s, **kwargs)
        if not 0.0 <= m < math.pi:
            raise ParameterError(f"ArcFace margin m must be in [0, pi), got {m}")
        self.m = float(m)

    def target_cosine(self, cos_target: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """cos(theta + m), or cos(theta) - m sin(m) where theta + m > pi."""
        return _arc_margin_cosine(cos_target, self.m)


class CosFaceHead(MarginHead):
    """CosFace (additive cosine margin): target logit s * (cos(theta) - m).

    Args: see `MarginHead`; m: cosine margin (default 0.4), s default 64.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.4, **kwargs
    ):
        super().__init__(embedding_dim, num_classes, s=s, **kwargs)
        self.m = float(m)

    def target_cosine(self, cos_target: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """cos(theta) - m."""
        return cos_target - self.m


def magface_quality(features: torch.Tensor) -> torch.Tensor:
    """MagFace quality of raw embeddings [B, D]: their L2 norm [B] (higher = better quality)."""
    return torch.linalg.vector_norm(features.float(), dim=-1)


class MagFaceHead(MarginHead):
    """MagFace: ArcFace whose margin grows with the embedding norm, plus a norm regulariser.

    With a = clamp(||f||, l_a, u_a): margin m(a) = l_m + (u_m - l_m) (a - l_a) / (u_a - l_a) and
    regulariser g(a) = 1/a + a/u_a^2 weighted by lambda_g, so the norm becomes a quality score
    (`magface_quality`). Defaults are the MagFace paper's (s=64, l_a=10, u_a=110, l_m=0.45, u_m=0.8,
    lambda_g=35).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        **kwargs,
    ):
        super().__init__(embedding_dim, num_classes, s=s, **kwargs)
        if not 0 < l_a < u_a:
            raise ParameterError(f"MagFace needs 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        if not 0 <= l_m <= u_m < math.pi:
            raise ParameterError(f"MagFace needs 0 <= l_m <= u_m < pi, got l_m={l_m}, u_m={u_m}")
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)

    def margin(self, norms: torch.Tensor) -> torch.Tensor:
        """Per-sample angular margin m(a) for embedding norms [N]."""
        a = norms.clamp(self.l_a, self.u_a)
        return self.l_m + (self.u_m - self.l_m) * (a - self.l_a) / (self.u_a - self.l_a)

    def target_cosine(self, cos_target: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """cos(theta + m(a)) with the ArcFace fallback where theta + m(a) > pi."""
        return _arc_margin_cosine(cos_target, self.margin(norms))

    def regulariser(self, norms: torch.Tensor) -> torch.Tensor:
        """lambda_g * (1/a + a/u_a^2) with a = clamp(norm, l_a, u_a)."""
        a = norms.clamp(self.l_a, self.u_a)
        return self.lambda_g * (1.0 / a + a / (self.u_a**2))


HEADS: dict[str, type[MarginHead]] = {
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
    "magface": MagFaceHead,
}


def build_head(name: str, embedding_dim: int, num_classes: int, **kwargs) -> MarginHead:
    """Build a margin head by name ('arcface', 'cosface', 'magface'); kwargs go to the class."""
    if name not in HEADS:
        raise ParameterError(f"unknown margin head {name!r}; expected one of {sorted(HEADS)}")
    try:
        return HEADS[name](embedding_dim, num_classes, **kwargs)
    except TypeError as exc:
        raise ParameterError(f"bad arguments for margin head {name!r}: {exc}") from exc
