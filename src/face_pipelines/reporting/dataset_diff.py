"""Semantic diff of two synthetic dataset versions: what changed in quality, not in bytes.

`dvc diff` says which files changed; this says what that means for a face-recognition training set:
identities, separability, intra-class spread, pose, AttrOP success, feature-space distance to the real
data, leakage, rendering speed, and what made each set, stage by stage (the card's lineage, see
reporting.lineage): the parameters that differ under their stage, the model and data files whose
content differs although their stage's parameters match ("same parameters, different generator
checkpoint"), and the code version - plus a sample grid of each side to look at. "Parameters:
identical" is said only when the whole lineage is.

A dataset version is named either by a folder (a rendered dataset root holding `manifest.parquet`,
`_COMPLETE` and `dataset_card.json`) or by `rev:<git-rev>`: the synthetic dataset as DVC tracked it at
that git revision of a repository (`data/07_model_output/synthetic_dataset`), read through dvc.api
without checking anything out.

    diff = diff_datasets("rev:HEAD~1", "data/07_model_output/synthetic_dataset")
    print(diff.to_text())
    diff.write_report("data/08_reporting/dataset_diff.md")
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.image_tensors import image_grid
from face_pipelines.io.atomic import atomic_path, write_text_atomic
from face_pipelines.io.images import decode_image
from face_pipelines.io.manifest import validate_manifest
from face_pipelines.reporting.lineage import (
    STAGE_ORDER,
    LineageComparison,
    compare_lineages,
    flatten_parameters,
    lineage_parameters,
)

__all__ = [
    "CARD_NAME",
    "DATASET_PATH",
    "REV_PREFIX",
    "DatasetDiff",
    "DatasetVersion",
    "DiffRow",
    "ParamDiff",
    "compare_versions",
    "diff_datasets",
    "flatten_parameters",
    "load_dataset_version",
    "yaw_sparkline",
]

REV_PREFIX = "rev:"
# Where the render stage writes the dataset (catalog entry `synthetic_dir`, DVC stage `render` out).
DATASET_PATH = "data/07_model_output/synthetic_dataset"
CARD_NAME = "dataset_card.json"
MANIFEST_NAME = "manifest.parquet"
COMPLETE_MARKER = "_COMPLETE"
ABSENT = "(absent)"
CHECKS_ROW = "card checks met"
_SPARK = "▁▂▃▄▅▆▇█"
_EMPTY_BIN = "·"


# --------------------------------------------------------------------------------------------------
# loading one version


@dataclass
class DatasetVersion:
    """One dataset version: its card, its manifest and a way to read its image files.

    Attributes:
        spec: how the user named it (a folder path or `rev:<git-rev>`).
        label: a short name for tables (the spec; for a revision also the commit it resolved to).
        card: the dataset card (dict, see reporting.dataset_card.build_dataset_card).
        manifest: the validated manifest (one row per image, `path` relative to the root).
        read_bytes: reads a file of the dataset given its path relative to the dataset root.
    """

    spec: str
    label: str
    card: dict
    manifest: pd.DataFrame
    read_bytes: Callable[[str], bytes] = field(repr=False)

    def sample_grid(self, identities: int = 6, per_identity: int = 6) -> np.ndarray:
        """A uint8 grid image: one row per identity (spread over the id range), its first images.

        Identities with fewer images leave white tiles, so every row is one identity.
        """
        ids = np.sort(self.manifest["identity"].unique())
        pick = ids[
            np.unique(np.linspace(0, len(ids) - 1, min(identities, len(ids))).round().astype(int))
        ]
        order = [c for c in ("identity", "index") if c in self.manifest.columns]
        rows = self.manifest.sort_values(order, kind="stable")
        groups = [rows.loc[rows["identity"] == i, "path"].tolist()[:per_identity] for i in pick]
        ncols = max(len(g) for g in groups)  # no all-white columns when identities are small
        tiles: list[np.ndarray | None] = []
        for paths in groups:
            imgs = [self._decode(p) for p in paths]
            tiles.extend(imgs + [None] * (ncols - len(imgs)))
        shape = next(t.shape for t in tiles if t is not None)
        stack = np.full((len(tiles), *shape), 255, np.uint8)
        for i, t in enumerate(tiles):
            if t is not None:
                if t.shape != shape:
                    raise DataError(
                        f"{self.spec}: images differ in size ({t.shape} vs {shape}); a rendered "
                        "dataset has one image size"
                    )
                stack[i] = t
        return image_grid(stack, ncols=ncols)

    def _decode(self, rel: str) -> np.ndarray:
        return decode_image(self.read_bytes(rel), source=f"{self.spec}: {rel}")


def _parse_json(data: bytes, source: str) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{source}: expected a JSON object, got {type(value).__name__}")
    return value


def _check_version(
    spec: str, where: str, card: dict, marker: dict, manifest_bytes: bytes, read
) -> DatasetVersion:
    """Validate the three files of a dataset version against each other."""
    try:
        df = pd.read_parquet(io.BytesIO(manifest_bytes))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(
            f"{where}/{MANIFEST_NAME}: not a readable parquet manifest ({type(exc).__name__})"
        ) from exc
    manifest = validate_manifest(df, f"{where}/{MANIFEST_NAME}")
    if "path" not in manifest.columns:
        raise DataError(f"{where}/{MANIFEST_NAME}: a rendered dataset's manifest needs 'path'")
    counts = (len(manifest), int(manifest["identity"].nunique()))
    if (marker.get("images"), marker.get("identities")) != counts:
        raise DataError(
            f"{where}: {MANIFEST_NAME} has {counts[0]} images / {counts[1]} identities but "
            f"{COMPLETE_MARKER} says {marker.get('images')} / {marker.get('identities')}"
        )
    for key in ("identities", "images"):
        if key not in card:
            raise DataError(f"{where}/{CARD_NAME}: not a dataset card (no '{key}' field)")
    return DatasetVersion(spec, spec, card, manifest, read)


def _load_folder(spec: str) -> DatasetVersion:
    root = Path(spec).expanduser()
    if not root.exists():
        raise MissingInputError(
            f"{spec}: no such folder; expected a rendered dataset root (e.g. {DATASET_PATH}) or "
            f"{REV_PREFIX}<git-rev>"
        )
    if not root.is_dir():
        raise DataError(
            f"{spec}: is a file; expected a rendered dataset folder or {REV_PREFIX}<rev>"
        )
    missing = [n for n in (MANIFEST_NAME, COMPLETE_MARKER, CARD_NAME) if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"{spec}: not a complete rendered dataset - missing {', '.join(missing)} (a dataset "
            f"root holds <identity>/<index>.jpg, {MANIFEST_NAME}, {COMPLETE_MARKER} and "
            f"{CARD_NAME}; an interrupted render has no {COMPLETE_MARKER})"
        )
    card = _parse_json((root / CARD_NAME).read_bytes(), str(root / CARD_NAME))
    marker = _parse_json((root / COMPLETE_MARKER).read_bytes(), str(root / COMPLETE_MARKER))

    def read(rel: str) -> bytes:
        path = root / rel
        if not path.is_file():
            raise MissingInputError(f"{spec}: image listed in the manifest is missing: {rel}")
        return path.read_bytes()

    return _check_version(spec, str(root), card, marker, (root / MANIFEST_NAME).read_bytes(), read)


def _load_revision(spec: str, repo: str | os.PathLike) -> DatasetVersion:
    rev = spec[len(REV_PREFIX) :].strip()
    if not rev:
        raise DataError(f"{spec!r}: empty revision; write {REV_PREFIX}<git-rev>, e.g. rev:HEAD~1")
    repo_str = str(repo)
    local = "://" not in repo_str and not repo_str.startswith("git@")
    if local:
        repo_str = str(_local_dvc_root(repo_str, spec))
    import dvc.api  # lazy: only revisions need DVC (and its import takes a second)
    from dvc.exceptions import DvcException

    commit = None
    if local:
        from dvc.scm import SCM
        from scmrepo.exceptions import SCMError

        try:
            commit = SCM(repo_str).resolve_rev(rev)
        except (DvcException, SCMError) as exc:
            raise DataError(f"{spec}: unknown git revision {rev!r} in {repo_str} ({exc})") from exc
    where = f"{spec} ({repo_str}:{DATASET_PATH})"
    try:
        fs = dvc.api.DVCFileSystem(repo_str, rev=commit or rev)
        fs.repo  # noqa: B018 - opens (clones) the repo now, so a bad URL/rev errors here, clearly
        found = {
            n: fs.isfile(f"{DATASET_PATH}/{n}") for n in (MANIFEST_NAME, COMPLETE_MARKER, CARD_NAME)
        }
    except DvcException as exc:
        raise DataError(f"{spec}: cannot read revision {rev!r} of {repo_str}: {exc}") from exc
    missing = [n for n, ok in found.items() if not ok]
    if missing:
        raise DataError(
            f"{where}: not a complete rendered dataset at that revision - missing "
            f"{', '.join(missing)}; is the dataset tracked by DVC there (dvc.lock or a .dvc file), "
            "and is that version in the DVC cache (`dvc fetch`)?"
        )

    def read(rel: str) -> bytes:
        try:
            return fs.read_bytes(f"{DATASET_PATH}/{rel}")
        except (FileNotFoundError, DvcException) as exc:
            raise MissingInputError(
                f"{where}: cannot read {rel} (is the DVC cache/remote holding that version? "
                f"try `dvc pull`): {exc}"
            ) from exc

    card = _parse_json(read(CARD_NAME), f"{where}/{CARD_NAME}")
    marker = _parse_json(read(COMPLETE_MARKER), f"{where}/{COMPLETE_MARKER}")
    version = _check_version(spec, where, card, marker, read(MANIFEST_NAME), read)
    if commit:
        version.label = f"{spec} ({commit[:8]})"
    return version


def _local_dvc_root(repo: str, spec: str) -> Path:
    """The DVC root of a local repo folder (it or an ancestor inside the git work tree)."""
    folder = Path(repo).expanduser()
    if not folder.is_dir():
        raise MissingInputError(f"--repo {repo}: no such folder (expected a git + DVC repository)")
    chain = [folder.resolve(), *folder.resolve().parents]
    git_top = next((p for p in chain if (p / ".git").exists()), None)
    if git_top is None:
        raise DataError(f"--repo {repo}: not a git repository, so {spec} cannot be read")
    dvc_root = next((p for p in chain[: chain.index(git_top) + 1] if (p / ".dvc").is_dir()), None)
    if dvc_root is None:
        raise DataError(
            f"--repo {repo}: DVC is not initialised in {git_top} (no .dvc folder); run `dvc init` "
            f"and track {DATASET_PATH} (the render stage of dvc.yaml, or `dvc add`) to diff revisions"
        )
    return dvc_root


def load_dataset_version(spec: str | os.PathLike, repo: str | os.PathLike = ".") -> DatasetVersion:
    """Load a dataset version named by a folder or by `rev:<git-rev>` (read from `repo` via DVC).

    Raises:
        MissingInputError: the folder, the repo folder or a listed file does not exist.
        DataError: not a (complete) rendered dataset, unknown revision, not a git repo, DVC not
            initialised, or the card / marker / manifest are unreadable or disagree.
    """
    spec = str(spec)
    if spec.startswith(REV_PREFIX):
        return _load_revision(spec, repo)
    return _load_folder(spec)


# --------------------------------------------------------------------------------------------------
# comparing two versions


@dataclass(frozen=True)
class DiffRow:
    """One measure side by side: raw values (None when absent) and their display text."""

    name: str
    a: Any
    b: Any
    text_a: str
    text_b: str
    delta: str = ""

    @property
    def changed(self) -> bool:
        """True when the two sides display differently."""
        return self.text_a != self.text_b


@dataclass(frozen=True)
class ParamDiff:
    """A generating parameter (flattened key, e.g. `sample.config.images_per_identity`) that differs."""

    key: str
    a: Any
    b: Any

    @property
    def stage(self) -> str:
        """The stage (parameter section) the key belongs to: `teacher` for `teacher.recognizer.*`."""
        return self.key.split(".", 1)[0]

    def texts(self) -> tuple[str, str]:
        """Display text of both sides; a key missing on one side shows as '(absent)'."""
        return _param_text(self.a), _param_text(self.b)


@dataclass
class DatasetDiff:
    """The semantic difference of two dataset versions (see `diff_datasets`).

    Attributes:
        a_label, b_label: names of the two sides.
        rows: measures side by side, in display order.
        param_diffs: the flattened parameters (`<stage>.<key>`) whose values differ, in stage
            order: the lineage's stages, with the card's `parameters` on top.
        grid_a, grid_b: uint8 sample grids of each side (None when built without images).
        lineage: the stage-by-stage comparison (inputs' content, code version, stages present).
    """

    a_label: str
    b_label: str
    rows: list[DiffRow]
    param_diffs: list[ParamDiff]
    grid_a: np.ndarray | None = field(default=None, repr=False)
    grid_b: np.ndarray | None = field(default=None, repr=False)
    lineage: LineageComparison | None = None

    @property
    def identical_recipe(self) -> bool:
        """True only when both cards carry a lineage and all of it matches (parameters of every
        stage, inputs' content, code): the one case the report says "Parameters: identical"."""
        return not self.param_diffs and self.lineage is not None and self.lineage.identical

    def row(self, name: str) -> DiffRow:
        """The row named `name` (KeyError when there is none)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def _table(self) -> tuple[list[str], list[list[str]]]:
        header = ["measure", f"A: {self.a_label}", f"B: {self.b_label}", "B - A"]
        return header, [[r.name, r.text_a, r.text_b, r.delta] for r in self.rows]

    def _param_table(self) -> tuple[list[str], list[list[str]]]:
        header = ["parameter", "A", "B"]
        return header, [[p.key, *p.texts()] for p in self.param_diffs]

    def _stage_table(self) -> tuple[list[str], list[list[str]]]:
        rows = [[s.stage, s.text] for s in self.lineage.stages] if self.lineage else []
        if self.lineage:
            rows.append(["code", self.lineage.code_text()])
        return ["stage", "A vs B"], rows

    def _input_table(self) -> tuple[list[str], list[list[str]]]:
        rows = [
            [f"{d.stage}: {d.name}", _fingerprint_text(d.a), _fingerprint_text(d.b)]
            for d in (self.lineage.inputs if self.lineage else ())
        ]
        return ["input (content fingerprint)", "A", "B"], rows

    def _lineage_notes(self) -> list[str]:
        """What the comparison could not cover, and the MLflow runs that wrote the cards."""
        lin = self.lineage
        if lin is None:
            return []
        notes = [
            f"{side}'s card has no lineage (written before lineages were recorded): only the "
            "card's own sample, render and vec2face parameters were compared"
            for side in lin.missing
        ]
        if lin.runs_a or lin.runs_b:
            notes.append(
                f"MLflow runs that wrote the cards: A {lin.runs_text('A')}; B {lin.runs_text('B')}"
            )
        return notes

    def _parameters_verdict(self) -> str:
        if self.identical_recipe:
            return "Parameters: identical"
        if self.lineage is None:
            return (
                "Parameters: no difference in the cards' sample, render and vec2face parameters "
                "(neither card records a lineage, so earlier stages were not compared)"
            )
        if self.lineage.missing:
            return "Parameters: no difference in what both cards record (see the note above)"
        return (
            "Parameters: the same values in every stage; the sets differ in the content of "
            "their inputs or in code (stage table above)"
        )

    def _check_notes(self) -> list[str]:
        try:
            row = self.row(CHECKS_ROW)
        except KeyError:
            return []
        return [
            f"{side} checks not met: {', '.join(failed)}"
            for side, failed in (("A", row.a), ("B", row.b))
            if failed
        ]

    def to_text(self) -> str:
        """A plain-text report: the side-by-side table, the lineage stage by stage, the differing
        parameters and the inputs whose content differs."""
        out = [_text_table(*self._table()), *self._check_notes(), ""]
        if self.lineage is not None and not self.identical_recipe:
            out += ["Lineage, stage by stage:", _text_table(*self._stage_table()), ""]
        notes = self._lineage_notes()
        out += [*notes, ""] if notes else []
        if self.param_diffs:
            out += [f"Parameters that differ ({len(self.param_diffs)}):"]
            out += [_text_table(*self._param_table())]
        else:
            out += [self._parameters_verdict()]
        if self.lineage is not None and self.lineage.inputs:
            out += ["", f"Inputs that differ in content ({len(self.lineage.inputs)}):"]
            out += [_text_table(*self._input_table())]
        if self.identical_recipe and self.lineage is not None:
            code = self.lineage.code_text().removeprefix("identical: ")
            out += [f"Lineage: identical in all {len(self.lineage.stages)} stages; code {code}"]
        return "\n".join(out)

    def to_markdown(self, grid_a: str | None = None, grid_b: str | None = None) -> str:
        """A markdown report; `grid_a`/`grid_b` are image links to the sample grids, if written."""
        out = [
            "# Dataset diff",
            "",
            f"- **A**: `{self.a_label}`",
            f"- **B**: `{self.b_label}`",
            "",
            markdown_table(*self._table()),
            "",
            *(f"- {note}" for note in self._check_notes()),
            "",
            "Yaw histograms: 10-degree bins from -90 to 90 degrees (pose model on the rendered "
            "pixels), both sides on one scale.",
            "",
            "## Lineage",
            "",
        ]
        if self.lineage is None:
            out.append("Neither card records a lineage.")
        elif self.identical_recipe:
            code = self.lineage.code_text().removeprefix("identical: ")
            out.append(f"Identical in all {len(self.lineage.stages)} stages; code {code}.")
        else:
            out.append(markdown_table(*self._stage_table()))
        out += ["", *(f"- {note}" for note in self._lineage_notes())]
        out += ["", "## Parameters that differ", ""]
        if self.param_diffs:
            out.append(markdown_table(*self._param_table()))
        elif self.identical_recipe:
            out.append("None: both sets were made by the same recipe, inputs and code.")
        else:
            out.append(f"None. {self._parameters_verdict()}.")
        if self.lineage is not None and self.lineage.inputs:
            out += ["", "## Inputs that differ in content", ""]
            out.append(markdown_table(*self._input_table()))
        if grid_a or grid_b:
            out += ["", "## Samples", "", "One row per identity (spread over the identity range)."]
            for side, label, link in (("A", self.a_label, grid_a), ("B", self.b_label, grid_b)):
                if link:
                    out += ["", f"### {side}: `{label}`", "", f"![{side} samples]({link})"]
        return "\n".join(out) + "\n"

    def write_report(self, path: str | os.PathLike) -> Path:
        """Write the markdown report and, next to it, `<stem>_a.png` / `<stem>_b.png` grids."""
        from PIL import Image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        links: dict[str, str | None] = {"a": None, "b": None}
        for side, grid in (("a", self.grid_a), ("b", self.grid_b)):
            if grid is None:
                continue
            png = path.with_name(f"{path.stem}_{side}.png")
            with atomic_path(png) as tmp:
                Image.fromarray(grid).save(tmp, format="PNG")
            links[side] = png.name
        write_text_atomic(path, self.to_markdown(links["a"], links["b"]))
        return path


def yaw_sparkline(counts, scale: float | None = None) -> str:
    """Histogram counts as a text sparkline of fractions; `scale` is the fraction drawn as a full block."""
    c = np.asarray(counts, dtype=np.float64)
    if c.size == 0 or c.sum() <= 0:
        return ""
    frac = c / c.sum()
    top = scale if scale and scale > 0 else frac.max()
    levels = np.clip(np.ceil(frac / top * len(_SPARK)) - 1, -1, len(_SPARK) - 1).astype(int)
    return "".join(
        _EMPTY_BIN if n == 0 else _SPARK[max(lv, 0)] for n, lv in zip(c, levels, strict=True)
    )


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _delta(a: Any, b: Any, digits: int) -> str:
    nums = (int, float, np.integer, np.floating)
    if (
        not (isinstance(a, nums) and isinstance(b, nums))
        or isinstance(a, bool)
        or isinstance(b, bool)
    ):
        return ""
    d = float(b) - float(a)
    if math.isnan(d):
        return ""
    if d == 0:
        return "="
    if isinstance(a, int | np.integer) and isinstance(b, int | np.integer):
        return f"{int(d):+d}"
    return f"{d:+.{digits}f}"


def _num_row(name: str, a: Any, b: Any, digits: int = 3) -> DiffRow:
    text_a, text_b = _fmt(a, digits), _fmt(b, digits)
    delta = _delta(a, b, digits)
    if delta and text_a == text_b:
        delta = "="  # equal at the shown precision (no "-0.0")
    return DiffRow(name, a, b, text_a, text_b, delta)


def _checks_row(a: dict, b: dict) -> DiffRow:
    """How many of the card's quality checks are met; raw values are the names NOT met."""
    raw, text = [], []
    for card in (a, b):
        checks = card.get("checks")
        if not isinstance(checks, Mapping) or not checks:
            raw.append(None)
            text.append("-")
            continue
        failed = [str(k) for k, ok in checks.items() if not ok]
        raw.append(failed)
        text.append(f"{len(checks) - len(failed)} of {len(checks)}")
    return DiffRow(CHECKS_ROW, raw[0], raw[1], text[0], text[1])


def _yaw_row(a: dict, b: dict) -> DiffRow:
    ha, hb = a.get("yaw_histogram"), b.get("yaw_histogram")
    fracs = [np.asarray(h, float) / np.sum(h) for h in (ha, hb) if h is not None and np.sum(h) > 0]
    scale = max((float(f.max()) for f in fracs), default=None)
    delta = ""
    if len(fracs) == 2 and len(fracs[0]) == len(fracs[1]):
        # Total variation distance: the share of images that would have to move bins.
        delta = f"TV {0.5 * float(np.abs(fracs[0] - fracs[1]).sum()):.3f}"
    return DiffRow(
        "yaw histogram (-90..90 deg)",
        ha,
        hb,
        yaw_sparkline(ha, scale) if ha is not None else "-",
        yaw_sparkline(hb, scale) if hb is not None else "-",
        delta,
    )


def _card_rows(a: dict, b: dict) -> list[DiffRow]:
    g = lambda card, key: card.get(key)  # noqa: E731
    rows = [
        _num_row("identities", g(a, "identities"), g(b, "identities")),
        _num_row("images", g(a, "images"), g(b, "images")),
        _num_row("threshold t", g(a, "threshold"), g(b, "threshold")),
        _num_row("separability @ t", g(a, "separability"), g(b, "separability")),
        _num_row("separability_real @ t", g(a, "separability_real"), g(b, "separability_real")),
        _num_row("separability @ 0.4", g(a, "separability_at_0_4"), g(b, "separability_at_0_4")),
        _num_row(
            "intra-class cos mean", g(a, "intra_class_cos_mean"), g(b, "intra_class_cos_mean")
        ),
        _num_row(
            "intra-class cos mean (real)",
            g(a, "intra_class_cos_mean_real"),
            g(b, "intra_class_cos_mean_real"),
        ),
        _yaw_row(a, b),
        _num_row("|yaw| mean (deg)", g(a, "yaw_abs_mean"), g(b, "yaw_abs_mean"), 1),
        _num_row("AttrOP yaw success", g(a, "attrop_yaw_success"), g(b, "attrop_yaw_success")),
        _num_row("feature_fd", g(a, "feature_fd"), g(b, "feature_fd")),
        _num_row("leaked identities", g(a, "leaked_identities"), g(b, "leaked_identities")),
        _num_row("images/s (render)", g(a, "images_per_second"), g(b, "images_per_second"), 1),
    ]
    rows.append(_checks_row(a, b))
    return rows


def _param_text(value: Any) -> str:
    if value is _MISSING:
        return ABSENT
    if isinstance(value, list | dict | tuple):
        return json.dumps(value, separators=(",", ":"), default=str)
    if value is None:
        return "null"
    return str(value)


_MISSING = object()


def _fingerprint_text(value: str | None) -> str:
    return ABSENT if value is None else value.removeprefix("sampled:")[:12]


def card_parameters(card: Mapping) -> dict[str, Any]:
    """A card's parameters flattened as `<stage>.<key>`: every lineage stage's, then the card's own
    `parameters` (sample, render, vec2face) on top."""
    return lineage_parameters(card.get("lineage")) | flatten_parameters(card.get("parameters"))


def _stage_rank(key: str) -> tuple[int, str]:
    stage = key.split(".", 1)[0]
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), key)


def _param_diffs(a: dict, b: dict) -> list[ParamDiff]:
    if a.get("lineage") and b.get("lineage"):
        pa, pb = card_parameters(a), card_parameters(b)
    else:  # what both can hold: a card older than lineages has only its own `parameters`
        pa, pb = flatten_parameters(a.get("parameters")), flatten_parameters(b.get("parameters"))
    out = []
    for key in sorted(set(pa) | set(pb), key=_stage_rank):
        va, vb = pa.get(key, _MISSING), pb.get(key, _MISSING)
        if _param_text(va) != _param_text(vb):
            out.append(ParamDiff(key, va, vb))
    return out


def compare_versions(a: DatasetVersion, b: DatasetVersion, grids: bool = True) -> DatasetDiff:
    """The diff of two loaded versions; `grids=False` skips decoding sample images."""
    params = _param_diffs(a.card, b.card)
    diff = DatasetDiff(a.label, b.label, _card_rows(a.card, b.card), params)
    la, lb = a.card.get("lineage"), b.card.get("lineage")
    if la or lb:
        diff.lineage = compare_lineages(la, lb, [p.key for p in params])
    if grids:
        diff.grid_a, diff.grid_b = a.sample_grid(), b.sample_grid()
    return diff


def diff_datasets(
    a: str | os.PathLike, b: str | os.PathLike, repo: str | os.PathLike = ".", grids: bool = True
) -> DatasetDiff:
    """Compare two dataset versions, each a dataset folder or `rev:<git-rev>` of `repo`.

    Args:
        a, b: a rendered dataset root (manifest.parquet, _COMPLETE, dataset_card.json) or
            `rev:<git-rev>` (the DVC-tracked `data/07_model_output/synthetic_dataset` at that rev).
        repo: the git + DVC repository that revisions are read from (a path or a git URL).
        grids: also decode a 6 x 6 sample grid of each side (`DatasetDiff.grid_a/grid_b`).

    Raises:
        MissingInputError / DataError: see `load_dataset_version`.
    """
    va = load_dataset_version(a, repo)
    vb = load_dataset_version(b, repo)
    return compare_versions(va, vb, grids=grids)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if text else " "


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table (pipes in cells escaped, empty cells kept)."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
