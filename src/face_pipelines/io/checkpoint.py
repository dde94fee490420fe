"""Model checkpoints: one dict layout, written atomically, loaded safely.

A checkpoint is `{"arch": name, "config": {...}, "state_dict": {...}, "meta": {...}, **extra}`. It is
written to a temporary sibling and renamed (an interrupted save leaves the previous file intact) and
loaded with `torch.load(weights_only=True)`, which refuses arbitrary Python objects. Foreign
checkpoints that are a bare state_dict (insightface `backbone.pth`) load through the same function.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.atomic import atomic_path

_PLAIN_TYPES = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device, torch.Size)


def _to_loadable(obj: Any, where: str) -> Any:
    """Return `obj` with Paths -> str and numpy scalars -> Python; raise on what weights_only refuses.

    Checked at save time so that a checkpoint that could not be loaded back is never written.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN_TYPES:
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        items = ((k, _to_loadable(v, f"{where}[{k!r}]")) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list | tuple | set):
        converted = [_to_loadable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return type(obj)(converted) if type(obj) in (list, tuple, set) else list(converted)
    raise ParameterError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a checkpoint loaded "
        "with torch.load(weights_only=True) cannot hold; store tensors, numbers, strings, lists "
        "and dicts only"
    )


def save_checkpoint(
    path: str | os.PathLike,
    arch: str | None,
    config: Mapping[str, Any] | None,
    state_dict: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write `{"arch", "config", "state_dict", "meta", **extra}` to `path` atomically.

    Args:
        path: destination file (parent folders are created).
        arch: architecture name the loader uses to rebuild the model (e.g. "iresnet50").
        config: keyword arguments that rebuild the model (plain values only).
        state_dict: the model's `state_dict()`.
        meta: free-form provenance (epoch, metrics, dataset, ...), plain values only.
        **extra: more top-level entries (optimizer state, ...), plain values or tensors only.

    Raises:
        ParameterError: a value would not load back with weights_only=True (e.g. a numpy array or a
            custom object); the message names the entry.
    """
    path = Path(path)
    payload: dict[str, Any] = {
        "arch": arch,
        "config": dict(config or {}),
        "state_dict": state_dict,
        "meta": dict(meta or {}),
    }
    for key, value in extra.items():
        if key in payload:
            raise ParameterError(f"save_checkpoint({path}): extra entry {key!r} clashes")
        payload[key] = value
    payload = _to_loadable(payload, f"checkpoint {path}")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _is_bare_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, or a foreign one, with weights_only=True.

    A bare state_dict (an OrderedDict of tensors, e.g. insightface backbone.pth) is returned as
    `{"arch": None, "config": {}, "state_dict": sd, "meta": {"foreign": True}}`; a foreign dict with a
    "state_dict" entry (e.g. MagFace) keeps its other entries and gets `meta["foreign"] = True`.

    Raises:
        MissingInputError: `path` does not exist.
        DataError: the file is corrupt, holds objects weights_only refuses, or is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise DataError(
                f"checkpoint {path} holds Python objects other than tensors and plain containers; "
                "it was refused because checkpoints load with weights_only=True (re-save its "
                "state_dict if you trust the file)"
            ) from exc
        raise DataError(f"checkpoint {path} is corrupt or not a torch file: {exc}") from exc
    except Exception as exc:  # zip/EOF/runtime errors from a truncated or foreign file
        raise DataError(
            f"checkpoint {path} is corrupt or not a torch file: {type(exc).__name__}: {exc}"
        ) from exc

    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        ckpt = dict(obj)
        ours = {"arch", "config", "meta"} <= set(ckpt)
        ckpt.setdefault("arch", None)
        ckpt["config"] = dict(ckpt.get("config") or {}) if ours else {}
        ckpt["meta"] = dict(ckpt.get("meta") or {}) if ours else {"foreign": True}
        if not isinstance(ckpt["arch"], str | None):
            ckpt["arch"] = None
        return ckpt
    if _is_bare_state_dict(obj):
        return {"arch": None, "config": {}, "state_dict": obj, "meta": {"foreign": True}}
    kind = (
        f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj)
    )
    raise DataError(
        f"checkpoint {path} is {kind}; expected a face_pipelines checkpoint "
        "{arch, config, state_dict, meta} or a bare state_dict of tensors"
    )


def strip_state_dict_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict:
    """Drop `prefix` from every key that has it (DDP saves `module.`, torch.compile `_orig_mod.`)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
