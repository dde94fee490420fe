"""Dataset lineage: everything that made a synthetic set, recorded in its card and compared by diffs.

A lineage is plain JSON inside the dataset card (`card["lineage"]`):

    {"schema": 1,
     "stages": {"<stage>": {"parameters": {...validated section...},
                            "inputs": {"<name>": {"sha256": ..., "path": ...}},
                            "after": ["<upstream stage>", ...]}, ...},
     "code": {"git_commit": ..., "git_dirty": ..., "package_version": ..., "source_digest": ...},
     "mlflow_runs": {"<stage that wrote the card>": "<run id>"}}

Stages are named after their parameter sections (common, faceworld, subset, teacher, vec2face, sample,
render, drgan, elegant), so a flattened key reads as the parameter it is: `teacher.recognizer.
embedding_dim`. `inputs` are content fingerprints of the model and data files a stage produced or
consumed (checkpoints, features, the identity plan): two sets whose parameters all match can still
differ there - a generator re-trained under the same recipe is another generator.

Fingerprints are sha256: of a checkpoint's weights (arch, config, tensors - two saves of the same
weights are the same model though their bytes differ), of other files' bytes (files larger than
`SAMPLED_ABOVE`, a WebFace4M .rec, from evenly spread chunks plus their size), of arrays and tables
held in memory by their values. File fingerprints are cached next to the file in `<file>.sha256`
(keyed on size and mtime, so a rewrite re-hashes; a read-only folder only loses the cache).

MLflow: this module never imports it. `active_mlflow_run_id` reads the active run only when the
calling process already imported MLflow (kedro-mlflow does); only the run that wrote the card is
known - the stages' own reports do not record the runs that produced them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.io.packed import PackedImages, array_fingerprint
from face_pipelines.training.code_version import PACKAGE, PACKAGE_ROOT, source_digest

__all__ = [
    "FINGERPRINT_SUFFIX",
    "LINEAGE_SCHEMA",
    "STAGE_ORDER",
    "InputDiff",
    "LineageComparison",
    "StageVerdict",
    "active_mlflow_run_id",
    "add_stage",
    "array_input",
    "build_lineage",
    "checkpoint_input",
    "code_version",
    "compare_lineages",
    "content_fingerprint",
    "file_input",
    "flatten_parameters",
    "frame_input",
    "lineage_parameters",
    "lineage_stage",
    "lineage_tracking_params",
    "upstream_stages",
    "weights_fingerprint",
]

LINEAGE_SCHEMA = 1
FINGERPRINT_SUFFIX = ".sha256"
SAMPLED_ABOVE = 4 << 30  # bytes; larger files are fingerprinted from chunks
_SAMPLE_CHUNKS, _CHUNK = 64, 1 << 20
_READ = 8 << 20

# Stages in the order they run, and what each one's outputs depend on (common precedes all).
STAGE_ORDER = (
    "common",
    "faceworld",
    "subset",
    "teacher",
    "vec2face",
    "sample",
    "render",
    "drgan",
    "elegant",
)
UPSTREAM = {
    "common": (),
    "faceworld": ("common",),
    "subset": ("common", "faceworld"),
    "teacher": ("common", "faceworld", "subset"),
    "vec2face": ("common", "subset", "teacher"),
    "sample": ("common", "subset", "teacher"),
    "render": ("common", "teacher", "vec2face", "sample"),
    "drgan": ("common", "subset"),
    "elegant": ("common", "subset", "teacher", "render"),
}
# Display-only settings: they change no output, so a lineage does not record them.
_UNRECORDED = {"common": ("progress",)}
# Parameters evaluate logs as `dataset.<key>` (besides per-stage digests): the upstream recipe
# knobs a comparison of evaluate runs most often needs to see by name.
TRACKED_PARAMETERS = (
    "faceworld.seed",
    "subset.source",
    "subset.path",
    "subset.n_ids",
    "subset.max_images",
    "subset.seed",
    "teacher.source",
    "teacher.checkpoint",
    "teacher.recognizer.arch",
    "teacher.recognizer.embedding_dim",
    "teacher.recognizer.method",
    "teacher.recognizer.epochs",
    "teacher.recognizer.seed",
    "teacher.judge.source",
    "teacher.pose.source",
    "vec2face.source",
    "vec2face.checkpoint",
    "vec2face.train.epochs",
    "vec2face.train.seed",
)
_DIGEST_CHARS = 12


# --------------------------------------------------------------------------------------------------
# fingerprints


def content_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, cached in `<file>.sha256` keyed on its size and mtime.

    Files above `SAMPLED_ABOVE` bytes hash their size and 64 evenly spread 1 MiB chunks (the last
    one ends at the end of the file) instead, prefixed "sampled:".

    Raises:
        FileNotFoundError / IsADirectoryError: `path` is not a readable file.
    """
    return _cached(Path(path), "bytes", _file_sha256)


def weights_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (hex) of what a model checkpoint computes: its arch, config and every state_dict
    tensor (name, dtype, shape, values) - not its `meta` (where and when it was trained) nor
    torch's zip layout, which differ between two saves of the same weights. A file that is not a
    checkpoint `io.checkpoint.load_checkpoint` reads is fingerprinted by its bytes. Cached like
    `content_fingerprint`."""
    return _cached(Path(path), "weights", _weights_sha256)


def _cached(path: Path, method: str, compute) -> str:
    st = path.stat()
    if not path.is_file():
        raise IsADirectoryError(f"{path}: a content fingerprint needs a file")
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = path.with_name(path.name + FINGERPRINT_SUFFIX)
    cached: dict = {}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(sidecar.read_text())
    if not isinstance(cached, dict) or {k: cached.get(k) for k in key} != key:
        cached = dict(key)
    if isinstance(cached.get(method), str):
        return cached[method]
    digest = compute(path)
    # A read-only location (a shared checkpoint folder) only loses the cache.
    with contextlib.suppress(OSError):
        write_text_atomic(sidecar, json.dumps({**cached, method: digest}) + "\n")
    return digest


def _file_sha256(path: Path) -> str:
    size = path.stat().st_size
    return _sampled_sha256(path, size) if size > SAMPLED_ABOVE else file_sha256(path)


def _weights_sha256(path: Path) -> str:
    import torch  # lazily, with the checkpoint loader: `face-pipelines diff` never needs them

    from face_pipelines.errors import DataError
    from face_pipelines.io.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except DataError:
        return _file_sha256(path)
    head = [ckpt.get("arch"), ckpt.get("config")]
    h = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    state = ckpt["state_dict"]
    for name in sorted(state, key=str):
        value = state[name]
        h.update(f"\0{name}\0".encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of all of a file's bytes (uncached)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            h.update(block)
    return h.hexdigest()


def _sampled_sha256(path: Path, size: int) -> str:
    h = hashlib.sha256(f"size={size}".encode())
    with path.open("rb") as f:
        for offset in np.linspace(0, max(size - _CHUNK, 0), _SAMPLE_CHUNKS).astype(np.int64):
            f.seek(int(offset))
            h.update(f.read(_CHUNK))
    return "sampled:" + h.hexdigest()


def file_input(path: str | os.PathLike) -> dict:
    """A lineage input for a data file: its path and content fingerprint (cached, see above)."""
    return {"path": str(path), "sha256": content_fingerprint(path)}


def checkpoint_input(path: str | os.PathLike) -> dict:
    """A lineage input for a model checkpoint: its path and weights fingerprint (cached)."""
    return {"path": str(path), "sha256": weights_fingerprint(path)}


def array_input(array: np.ndarray) -> dict:
    """A lineage input for an array held in memory (dtype, shape and every byte)."""
    return {"sha256": array_fingerprint(np.asarray(array))}


def frame_input(frame: pd.DataFrame) -> dict:
    """A lineage input for a table (e.g. the identity plan): column names, dtypes and values."""
    head = json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode()
    rows = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    return {"sha256": hashlib.sha256(head + array_fingerprint(rows).encode()).hexdigest()[:20]}


# --------------------------------------------------------------------------------------------------
# code version and the active MLflow run


def code_version() -> dict:
    """Which code wrote a card: the git commit and whether tracked files were modified (when the
    package runs from a git checkout), the package version, and a digest of the package's source
    (face_pipelines/**/*.py, the same digest `training.code_version` computes) that tells two
    dirty trees or two installs apart."""
    files = sorted(PACKAGE_ROOT.rglob("*.py"))
    modules = [
        ".".join([PACKAGE, *f.relative_to(PACKAGE_ROOT).with_suffix("").parts]).removesuffix(
            ".__init__"
        )
        for f in files
    ]
    out: dict[str, Any] = {
        "package_version": _package_version(),
        "source_digest": source_digest(modules).digest[:16],
    }
    out.update(_git_state(PACKAGE_ROOT))
    return out


def _package_version() -> str:
    from face_pipelines import __version__

    return __version__


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_state(package_root: Path) -> dict:
    # The package file must be tracked: an install inside another repository's ignored folder
    # (a .venv in a project checkout) is not that repository's code.
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_root) is None:
        return {}
    commit = _git(["rev-parse", "HEAD"], package_root)
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_root)
    if commit is None or status is None:
        return {}
    return {"git_commit": commit, "git_dirty": bool(status)}


def active_mlflow_run_id() -> str | None:
    """The id of the active MLflow run, or None; reads MLflow only if the process imported it
    already (a run cannot be active otherwise), so library code stays free of the import."""
    mlflow = sys.modules.get("mlflow")
    try:
        run = mlflow.active_run() if mlflow is not None else None
    except Exception:  # noqa: BLE001 - provenance must never fail the card
        return None
    return run.info.run_id if run is not None else None


# --------------------------------------------------------------------------------------------------
# building a lineage


def _plain(parameters: Any) -> dict:
    if parameters is None:
        return {}
    if hasattr(parameters, "model_dump"):
        return parameters.model_dump(mode="json")
    return json.loads(json.dumps(dict(parameters), default=str))


def lineage_stage(name: str, parameters: Any, inputs: Mapping[str, dict] | None = None) -> dict:
    """One stage's entry: its validated parameters (a pydantic model or a mapping), the content
    fingerprints of its inputs (`checkpoint_input`, `file_input`, `array_input`, `frame_input`)
    and its upstream stages."""
    params = _plain(parameters)
    for key in _UNRECORDED.get(name, ()):
        params.pop(key, None)
    return {
        "parameters": params,
        "inputs": dict(inputs or {}),
        "after": list(UPSTREAM.get(name, ())),
    }


def upstream_stages(
    sections: Mapping[str, Any],
    faceworld_info: Mapping,
    subset_packed_dir: str | os.PathLike,
    teacher_summaries: Mapping[str, Mapping],
    teacher_features: np.ndarray,
) -> dict[str, dict]:
    """The stages every synthetic set shares: common, faceworld, subset and teacher.

    Args:
        sections: the validated parameter sections {"common", "faceworld", "subset", "teacher"}
            (pydantic models or mappings).
        faceworld_info: the subset pipeline's `faceworld_info` (its `config_hash` names the world).
        subset_packed_dir: the packed subset; its `PackedImages.fingerprint()` (labels and 512
            evenly spread images) is the content of the selected images as every later stage read
            them - for a real folder source it stands for the folder, whose millions of files are
            not hashed.
        teacher_summaries: {"teacher": summary, "judge": summary, "pose": summary}, each with the
            `checkpoint` path the teacher pipeline wrote or was given.
        teacher_features: the raw teacher features of the subset.
    """
    fw = _plain(sections["faceworld"])
    world_inputs = {}
    if fw.get("enabled", True) and faceworld_info.get("config_hash"):
        world_inputs["world"] = {"sha256": str(faceworld_info["config_hash"])}
    stages = {
        "common": lineage_stage("common", sections["common"]),
        # A disabled world's parameters describe nothing that was made.
        "faceworld": lineage_stage(
            "faceworld", fw if fw.get("enabled", True) else {"enabled": False}, world_inputs
        ),
    }
    sub = _plain(sections["subset"])
    subset_inputs = {
        "packed images": {"sha256": PackedImages(Path(subset_packed_dir)).fingerprint()}
    }
    if sub.get("source") == "recordio" and sub.get("path"):
        rec = Path(sub["path"])
        subset_inputs["source .rec"] = file_input(rec)
        subset_inputs["source .idx"] = file_input(sub.get("idx_path") or rec.with_suffix(".idx"))
    stages["subset"] = lineage_stage("subset", sub, subset_inputs)
    teacher_inputs = {
        f"{k} checkpoint": checkpoint_input(summary["checkpoint"])
        for k, summary in teacher_summaries.items()
    }
    teacher_inputs["features"] = array_input(teacher_features)
    stages["teacher"] = lineage_stage("teacher", sections["teacher"], teacher_inputs)
    return stages


def build_lineage(
    stages: Mapping[str, dict], mlflow_runs: Mapping[str, str | None] | None = None, code=None
) -> dict:
    """The card's lineage from its stages (`lineage_stage`, `upstream_stages`), the code version
    (`code_version()` unless given) and {stage that wrote the card: MLflow run id} (None dropped)."""
    return {
        "schema": LINEAGE_SCHEMA,
        "stages": _ordered(stages),
        "code": dict(code) if code is not None else code_version(),
        "mlflow_runs": {k: v for k, v in (mlflow_runs or {}).items() if v},
    }


def add_stage(
    lineage: Mapping | None, name: str, stage: dict, mlflow_run_id: str | None = None
) -> dict:
    """A copy of `lineage` with one more stage (e.g. an attribute editor applied to a rendered set);
    a card without a lineage gets one holding this stage alone."""
    if not lineage:
        return build_lineage({name: stage}, {name: mlflow_run_id})
    runs = dict(lineage.get("mlflow_runs") or {})
    if mlflow_run_id:
        runs[name] = mlflow_run_id
    return {
        **lineage,
        "stages": _ordered({**(lineage.get("stages") or {}), name: stage}),
        "mlflow_runs": runs,
    }


def _ordered(stages: Mapping[str, dict]) -> dict[str, dict]:
    rank = {s: i for i, s in enumerate(STAGE_ORDER)}
    return dict(sorted(stages.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


# --------------------------------------------------------------------------------------------------
# reading and comparing lineages


def flatten_parameters(params: Mapping | None, prefix: str = "") -> dict[str, Any]:
    """Nested parameters as `{"sample.config.images_per_identity": 3, ...}` (MLflow's spelling)."""
    out: dict[str, Any] = {}
    for k, v in (params or {}).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten_parameters(v, key))
        else:
            out[key] = v
    return out


def _stages(lineage: Mapping | None) -> dict[str, dict]:
    return dict((lineage or {}).get("stages") or {})


def lineage_parameters(lineage: Mapping | None) -> dict[str, Any]:
    """Every stage's parameters, flattened as `<stage>.<key>`."""
    return flatten_parameters({s: v.get("parameters") or {} for s, v in _stages(lineage).items()})


def _code_key(code: Mapping) -> tuple:
    if code.get("source_digest"):
        return ("source", code["source_digest"])
    return ("version", code.get("git_commit"), code.get("git_dirty"), code.get("package_version"))


def _code_text(code: Mapping) -> str:
    if not code:
        return "-"
    if code.get("git_commit"):
        text = f"git {code['git_commit'][:8]}" + (" (dirty)" if code.get("git_dirty") else "")
    else:
        text = f"package {code.get('package_version', '?')}"
    return text + (f", source {code['source_digest'][:8]}" if code.get("source_digest") else "")


@dataclass(frozen=True)
class InputDiff:
    """A stage input whose content fingerprint differs (None: the side does not record it)."""

    stage: str
    name: str
    a: str | None
    b: str | None


@dataclass(frozen=True)
class StageVerdict:
    """How one stage compares: differing parameter keys and input names, differing stages
    upstream of it, and `presence` ("only in A" / "only in B") when one side lacks the stage."""

    stage: str
    parameters: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    presence: str | None = None

    @property
    def differs(self) -> bool:
        return bool(self.parameters or self.inputs or self.presence)

    @property
    def text(self) -> str:
        """e.g. "same parameters, different generator checkpoint (follows from teacher)"."""
        if self.presence:
            return self.presence
        if not self.differs:
            return "identical"
        n = len(self.parameters)
        parts = [f"{n} parameter{'s' if n != 1 else ''} differ{'s' if n == 1 else ''}"] if n else []
        if self.inputs:
            what = f"different {', '.join(self.inputs)}"
            parts.append(what if n else f"same parameters, {what}")
        text = "; ".join(parts)
        if self.inputs and self.upstream:
            text += f" (follows from {', '.join(self.upstream)})"
        return text


@dataclass(frozen=True)
class LineageComparison:
    """Two lineages stage by stage (see `compare_lineages`)."""

    stages: tuple[StageVerdict, ...]
    inputs: tuple[InputDiff, ...]
    code_a: dict
    code_b: dict
    missing: tuple[str, ...] = ()  # "A" / "B": sides whose card has no lineage
    runs_a: dict = field(default_factory=dict)  # {stage that wrote the card: MLflow run id}
    runs_b: dict = field(default_factory=dict)

    @property
    def code_identical(self) -> bool:
        return _code_key(self.code_a) == _code_key(self.code_b)

    @property
    def identical(self) -> bool:
        """Both sides have a lineage, and every stage, input and the code match."""
        return not self.missing and not any(s.differs for s in self.stages) and self.code_identical

    def runs_text(self, side: str) -> str:
        """e.g. "render 1a2b3c4d" for side "A" ("-" when none is recorded)."""
        runs = self.runs_a if side == "A" else self.runs_b
        return ", ".join(f"{k} {str(v)[:8]}" for k, v in runs.items()) or "-"

    def code_text(self) -> str:
        if self.code_identical:
            return f"identical: {_code_text(self.code_a)}"
        return f"A {_code_text(self.code_a)}; B {_code_text(self.code_b)}"


def compare_lineages(
    a: Mapping | None, b: Mapping | None, parameter_keys: Iterable[str]
) -> LineageComparison:
    """Compare two lineages stage by stage.

    Args:
        a, b: the cards' lineages (None for a card written before lineages were recorded).
        parameter_keys: the flattened `<stage>.<key>` parameters already found to differ (the
            caller compares values, so the card's own `parameters` can take part).
    """
    sa, sb = _stages(a), _stages(b)
    by_stage: dict[str, list[str]] = {}
    for key in parameter_keys:
        by_stage.setdefault(key.split(".", 1)[0], []).append(key)
    input_diffs = []
    changed_inputs: dict[str, list[str]] = {}
    for stage in _ordered({**sa, **sb}):
        ia = (sa.get(stage) or {}).get("inputs") or {}
        ib = (sb.get(stage) or {}).get("inputs") or {}
        for name in [*ia, *(n for n in ib if n not in ia)]:
            fa, fb = (ia.get(name) or {}).get("sha256"), (ib.get(name) or {}).get("sha256")
            if fa != fb and stage in sa and stage in sb:
                input_diffs.append(InputDiff(stage, name, fa, fb))
                changed_inputs.setdefault(stage, []).append(name)
    names = list(_ordered({**sa, **sb, **dict.fromkeys(by_stage, {})}))
    presence = {
        s: ("only in A" if s in sa else "only in B")
        for s in names
        if (s in sa) != (s in sb) and a and b
    }
    differing = {s for s in names if s in by_stage or s in changed_inputs or s in presence}
    verdicts = []
    for s in names:
        after = _transitive_upstream(s, sa, sb)
        verdicts.append(
            StageVerdict(
                s,
                tuple(sorted(by_stage.get(s, ()))),
                tuple(changed_inputs.get(s, ())),
                tuple(u for u in names if u in after and u in differing),
                presence.get(s),
            )
        )
    missing = tuple(side for side, lin in (("A", a), ("B", b)) if not lin)
    return LineageComparison(
        tuple(verdicts),
        tuple(input_diffs),
        dict((a or {}).get("code") or {}),
        dict((b or {}).get("code") or {}),
        missing,
        dict((a or {}).get("mlflow_runs") or {}),
        dict((b or {}).get("mlflow_runs") or {}),
    )


def _transitive_upstream(stage: str, *sides: Mapping[str, dict]) -> set[str]:
    def direct(s: str) -> list[str]:
        recorded = [u for side in sides for u in (side.get(s) or {}).get("after", [])]
        return recorded or list(UPSTREAM.get(s, ()))

    seen: set[str] = set()
    todo = direct(stage)
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(direct(s))
    return seen


# --------------------------------------------------------------------------------------------------
# MLflow parameters of evaluate runs


def _short(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()[:_DIGEST_CHARS]


def lineage_tracking_params(lineage: Mapping | None) -> dict[str, str]:
    """`dataset.*` MLflow parameters that tell the sets of evaluate runs apart.

    Per stage `dataset.<stage>.params` (a digest of its parameters) and `dataset.<stage>.<input>`
    (its inputs' fingerprints, shortened), the `TRACKED_PARAMETERS` by name, `dataset.code` and
    `dataset.card_run` (the MLflow run that wrote the card). A run comparison shows a column only
    where runs differ, so a teacher change appears as `dataset.teacher.params` and, e.g.,
    `dataset.teacher.recognizer.embedding_dim`. Empty for a card without a lineage.
    """
    if not lineage:
        return {}
    out: dict[str, str] = {}
    for stage, entry in _stages(lineage).items():
        out[f"dataset.{stage}.params"] = _short(entry.get("parameters") or {})
        for name, fp in (entry.get("inputs") or {}).items():
            sha = str((fp or {}).get("sha256", ""))
            out[f"dataset.{stage}.{name.replace(' ', '_')}"] = sha.removeprefix("sampled:")[
                :_DIGEST_CHARS
            ]
    flat = lineage_parameters(lineage)
    for key in TRACKED_PARAMETERS:
        if key in flat:
            out[f"dataset.{key}"] = "null" if flat[key] is None else str(flat[key])
    code = lineage.get("code") or {}
    if code:
        out["dataset.code"] = _code_text(code)
    runs = lineage.get("mlflow_runs") or {}
    if runs:
        out["dataset.card_run"] = ",".join(f"{k}:{v}" for k, v in runs.items())
    return out
