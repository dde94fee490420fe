"""Build recognizer backbones by name and load their weights (project checkpoints or insightface's).

Checkpoints of this project are dicts {"arch", "config", "state_dict", "meta"}; a foreign
insightface `backbone.pth` is a bare state_dict (possibly saved from DDP with a "module." prefix).
Both load through `load_backbone_weights`, which names the missing / unexpected / mis-shaped keys on
mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.models.drgan import drgan_encoder_backbone
from face_pipelines.models.iresnet import iresnet18, iresnet34, iresnet50, iresnet100
from face_pipelines.models.small import SmallFaceNet

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small": SmallFaceNet,
    "iresnet18": iresnet18,
    "iresnet34": iresnet34,
    "iresnet50": iresnet50,
    "iresnet100": iresnet100,
    "drgan_encoder": drgan_encoder_backbone,  # DR-GAN's identity encoder (evaluated as a recognizer)
}

# Prefixes added by wrappers when a wrapped model's state_dict is saved (DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # keys listed per category in an error message


def build_backbone(arch: str, **kwargs) -> nn.Module:
    """Build a backbone by name: 'small', 'iresnet18/34/50/100' or 'drgan_encoder'.

    kwargs go to the constructor: `num_features` (embedding size; `embedding_dim` is accepted as
    an alias), `input_size` (pixels), `dropout`, and for 'small' `widths`, `blocks`, `stem_width`.
    Every model has `num_features`, `input_size` and an `arch` attribute (checkpoints record and
    check it).
    """
    if arch not in BACKBONES:
        raise ParameterError(f"unknown backbone arch {arch!r}; expected one of {sorted(BACKBONES)}")
    if "embedding_dim" in kwargs:
        if "num_features" in kwargs:
            raise ParameterError("give either num_features or embedding_dim, not both")
        kwargs["num_features"] = kwargs.pop("embedding_dim")
    try:
        model = BACKBONES[arch](**kwargs)
    except TypeError as exc:
        raise ParameterError(
            f"bad arguments {sorted(kwargs)} for backbone {arch!r}: {exc}"
        ) from exc
    model.arch = arch
    return model


def _strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)}: {shown}{more}"


def load_backbone_weights(
    model: nn.Module,
    state_dict_or_checkpoint: Mapping,
    strict: bool = True,
    source: str = "checkpoint",
):
    """Load a project checkpoint dict or a bare (insightface) state_dict into `model`.

    A project checkpoint is recognised by its "state_dict" and "arch" keys; when the model has an
    `arch` attribute (see `build_backbone`) the two must agree. "module." / "_orig_mod." prefixes
    (DDP / torch.compile saves) are stripped. Shape mismatches always raise; with `strict=True`
    missing or unexpected keys raise too. `source` names the file in error messages.

    Returns the (missing_keys, unexpected_keys) result of `load_state_dict`.
    """
    if not isinstance(state_dict_or_checkpoint, Mapping):
        raise DataError(
            f"{source}: expected a state_dict or a checkpoint dict, got "
            f"{type(state_dict_or_checkpoint).__name__}"
        )
    state_dict = state_dict_or_checkpoint
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        ckpt_arch = state_dict.get("arch")
        model_arch = getattr(model, "arch", None)
        if ckpt_arch is not None and model_arch is not None and ckpt_arch != model_arch:
            raise DataError(
                f"{source}: checkpoint holds arch {ckpt_arch!r} but the model is {model_arch!r}"
            )
        state_dict = state_dict["state_dict"]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{source}: state_dict values must be tensors; not for {_listing(bad)}")
    state_dict = _strip_wrapper_prefixes(state_dict)

    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if mis_shaped:
        problems.append(f"shape mismatches {_listing(mis_shaped)}")
    if strict and missing:
        problems.append(f"missing keys {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if problems:
        arch = getattr(model, "arch", type(model).__name__)
        hint = ""
        if mis_shaped and any(k.startswith("fc.") for k in mis_shaped):
            hint = " (an fc.weight mismatch usually means a different input_size or embedding size)"
        raise DataError(
            f"{source}: weights do not fit backbone {arch!r}: " + "; ".join(problems) + hint
        )
    return model.load_state_dict(state_dict, strict=strict)
