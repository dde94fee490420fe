"""Parameter schemas, one pydantic model per section (= per conf/base/parameters_<section>.yml).

Nodes call `validate_section(name, raw)`; the Kedro hook calls `validate_all` once per run so a bad key
fails before any work starts. Unknown keys are errors (typos must not be silently ignored).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from face_pipelines.errors import ParameterError
from face_pipelines.faceworld.config import FaceWorldConfig
from face_pipelines.synthesis.attrop import AttrOPConfig
from face_pipelines.synthesis.plan import SampleConfig
from face_pipelines.synthesis.pose_code import PoseCodePlanConfig
from face_pipelines.training.attributes import PoseConfig
from face_pipelines.training.drgan import DRGANTrainConfig
from face_pipelines.training.elegant import AttributeClassifierConfig, ELEGANTTrainConfig
from face_pipelines.training.recognizer import RecognizerConfig
from face_pipelines.training.vec2face import Vec2FaceTrainConfig

_C = TypeVar("_C", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# common
class CommonParams(Strict):
    seed: int = Field(
        0,
        ge=0,
        description="Global seed offset: every stage's effective seed is its own `seed` plus this "
        "(stage_seed); 0 runs each stage with its file value. FaceWorld's world seed is apart.",
    )
    device: str = Field(
        "auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'."
    )
    num_workers: int = Field(
        0, ge=0, description="DataLoader / decoding worker processes (0 = in-process)."
    )
    progress: bool = Field(True, description="Show tqdm progress bars on long loops.")

    def stage_seed(self, value: int) -> int:
        """The seed a stage runs with: its own `seed` value plus common.seed.

        The one seed policy of the project. With common.seed 0 (the default) every stage runs with
        exactly the seed its parameters file gives it; any other common.seed shifts every stage's
        seed by the same amount, so stages keep distinct seeds where their files give distinct ones
        (teacher 0, judge 1). FaceWorld's world seed does not go through here: it defines the
        benchmark (the ruler), which must not move when the experiment is re-seeded.
        """
        return int(value) + self.seed

    def seeded(self, config: _C) -> _C:
        """`config` (any parameters model with a `seed` field: a trainer recipe, a sampling plan)
        with its seed replaced by stage_seed(config.seed)."""
        return config.model_copy(update={"seed": self.stage_seed(config.seed)})

    @model_validator(mode="after")
    def _check_device(self):
        d = self.device
        if not (d in {"auto", "cpu", "cuda"} or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {d!r}")
        return self


# --------------------------------------------------------------------------------------------------
# subset
class SubsetParams(Strict):
    source: Literal["faceworld", "folder", "recordio"] = Field(
        "faceworld",
        description="Where raw faces come from: the embedded FaceWorld train pool, a "
        "WebFace-style identity folder, or an insightface .rec/.idx pair.",
    )
    path: str | None = Field(
        None, description="Folder root or .rec path when source is folder/recordio."
    )
    idx_path: str | None = Field(None, description=".idx path for recordio (default: <rec>.idx).")
    n_ids: int = Field(..., gt=0, description="Number of identities to keep.")
    min_images: int = Field(2, ge=1, description="Identities with fewer images are not eligible.")
    max_images: int = Field(
        50, ge=1, description="Images per identity are capped at this (by seed)."
    )
    seed: int = Field(0, description="Seed for identity and image selection.")
    image_size: int = Field(
        64, gt=0, description="Side of the packed square images (resized if needed)."
    )
    shard_size: int = Field(4096, gt=0, description="Images per packed uint8 shard.")

    @model_validator(mode="after")
    def _check(self):
        if self.max_images < self.min_images:
            raise ValueError("max_images must be >= min_images")
        return self


# --------------------------------------------------------------------------------------------------
# later stages: schemas grow with their pipelines
# --------------------------------------------------------------------------------------------------
# faceworld (the embedded data; lives in parameters_subset.yml next to the subset that samples it)
class FaceWorldParams(FaceWorldConfig):
    enabled: bool = Field(
        True,
        description="Materialise FaceWorld (off in conf/paper when every "
        "input - subset, teacher, benchmarks - comes from real data by path).",
    )

    def world(self) -> FaceWorldConfig:
        return FaceWorldConfig.model_validate(self.model_dump(exclude={"enabled"}))


# --------------------------------------------------------------------------------------------------
# teacher
class PoseParams(Strict):
    source: Literal["train", "checkpoint"] = Field(
        "train", description="train the yaw/pitch regressor on FaceWorld labels, or load one"
    )
    checkpoint: str | None = Field(
        None,
        description="pose_regressor checkpoint, or a 6DRepNet file (6DRepNet_300W_LP_AFLW2000.pth, "
        "bare state dict in deploy or train form), by path",
    )
    train: PoseConfig = Field(default_factory=PoseConfig, description="recipe when source=train")


class BareStateDictRecognizer(Strict):
    """How to build a recognizer from a bare state_dict (insightface backbone.pth, MagFace); a
    project checkpoint records its own architecture."""

    checkpoint_arch: str | None = Field(None, description="arch of a bare state_dict (iresnet100)")
    checkpoint_input_size: int = Field(112, gt=0, description="input size of a bare state_dict")
    checkpoint_embedding_dim: int = Field(512, gt=0, description="embedding of a bare state_dict")

    def checkpoint_kwargs(self) -> dict:
        """`load_recognizer` keyword arguments for a bare state_dict."""
        return {
            "arch": self.checkpoint_arch,
            "input_size": self.checkpoint_input_size,
            "embedding_dim": self.checkpoint_embedding_dim,
        }


class RecognizerSource(BareStateDictRecognizer):
    """Where a recognizer of the teacher pipeline comes from: trained here on FaceWorld's pretrain
    pool from `recognizer`, or loaded by path (the teacher and the judge share this schema)."""

    source: Literal["train", "checkpoint"] = Field(
        "train", description="train on FaceWorld's pretrain pool, or load a recognizer by path"
    )
    checkpoint: str | None = Field(
        None, description="project checkpoint or insightface backbone.pth when source=checkpoint"
    )
    recognizer: RecognizerConfig = Field(
        default_factory=RecognizerConfig, description="recipe when source=train"
    )


class TeacherParams(RecognizerSource):
    judge: RecognizerSource = Field(
        default_factory=RecognizerSource,
        description="independent judge: a recognizer no generator or editor loss uses",
    )
    pose: PoseParams = Field(default_factory=PoseParams, description="head-pose model for AttrOP")
    feature_batch_size: int = Field(256, gt=0, description="batch size of feature extraction")


# --------------------------------------------------------------------------------------------------
# recognizer / evaluate
class RecognizerDataParams(Strict):
    """How a training set is stored (face_pipelines.training.data.choose_training_format)."""

    format: Literal["auto", "packed", "jpeg"] = Field(
        "auto",
        description="packed: decode once into raw uint8 shards; jpeg: read the JPEGs in place, "
        "decoded in the loader workers; auto: packed while the decoded set fits packed_limit_gib",
    )
    packed_limit_gib: float = Field(
        8.0, gt=0, description="auto packs a set only if N*H*W*3 bytes stay within this"
    )


class RecognizerParams(Strict):
    match_image_count: bool = Field(
        True,
        description="train the synthetic and the real recognizer on the same number of "
        "images (the larger set is subsampled evenly over identities, by seed)",
    )
    max_images: int | None = Field(None, gt=0, description="cap on training images per instance")
    seed: int = Field(0, description="seed of the subsampling")
    train: RecognizerConfig = Field(
        default_factory=RecognizerConfig, description="the recipe, identical for every instance"
    )
    data: RecognizerDataParams = Field(
        default_factory=RecognizerDataParams, description="training-set storage (size rule)"
    )


class EvaluateParams(Strict):
    faceworld_benchmarks: bool = Field(True, description="evaluate on FaceWorld's fw_* .bin files")
    benchmarks: dict[str, str | None] = Field(
        default_factory=dict,
        description="extra benchmarks {name: path to insightface .bin}; a null path is an error "
        "naming the key when evaluate runs (conf/paper lists the five the user gives)",
    )
    batch_size: int = Field(256, gt=0, description="embedding batch size")
    checkpoint: str | None = Field(
        None,
        description="a further recognizer to verify beside the trained ones, as row `checkpoint`: "
        "a project checkpoint by path or an MLflow model (models:/name/version, models:/name@alias, "
        "models:/m-<id>); null = none",
    )


_DEFAULT_VARIANTS = {
    "arcface": {"method": "arcface"},
    "topofr": {"method": "topofr"},
    "topofr_no_sde": {"method": "topofr", "topofr": {"sde": False}},
}


class AblationParams(Strict):
    datasets: list[Literal["real", "synthetic"]] = Field(
        default_factory=lambda: ["real", "synthetic"],
        min_length=1,
        description="training sets (the recognizer pipeline's packed sets) every variant trains on",
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(_DEFAULT_VARIANTS),
        description="{name: partial recipe deep-merged onto recognizer.train}; same seed/budget",
    )

    @model_validator(mode="after")
    def _check_variants(self):
        # Keys and types are checked here against the default recipe; the node re-validates the
        # merge onto the configured recognizer.train.
        from face_pipelines.training.ablation import variant_configs

        variant_configs(RecognizerConfig().model_dump(), self.variants)
        return self


# --------------------------------------------------------------------------------------------------
# vec2face
class FeatureProbeParams(Strict):
    """Identity-disjoint linear probes of the teacher's raw features (metrics.feature_probe)."""

    enabled: bool = Field(True, description="write the 'feature_probe' section of the report")
    folds: int = Field(5, ge=2, description="identity-disjoint folds (>= 2 identities per fold)")
    max_images: int | None = Field(
        None, gt=0, description="probe a random subset of this many images (null = all)"
    )
    ridge_alpha: float = Field(
        1.0, gt=0, description="L2 strength of the ridge and logistic probes (fixed, no search)"
    )
    attributes: list[str] | None = Field(
        None,
        description="manifest columns to probe (null = every column but path/identity bookkeeping)",
    )


class Vec2FaceParams(Strict):
    source: Literal["train", "checkpoint"] = Field(
        "train",
        description="train the generator on the subset, or load one by path (upstream's "
        "released vec2face_generator.pth or a vec2face checkpoint of this project)",
    )
    checkpoint: str | None = Field(None, description="the generator file when source=checkpoint")
    train: Vec2FaceTrainConfig = Field(
        default_factory=Vec2FaceTrainConfig, description="generator recipe when source=train"
    )
    probe: FeatureProbeParams = Field(
        default_factory=FeatureProbeParams,
        description="what the teacher's raw features carry (pose, light, age, accessories)",
    )


# --------------------------------------------------------------------------------------------------
# render settings shared by every generator's set
class RenderSettings(Strict):
    """How a synthetic set is rendered, whichever the generator (render, drgan.synth.render)."""

    shard_identities: int = Field(50, gt=0, description="identities per shard (unit of resume)")
    batch_size: int = Field(64, gt=0, description="images generated per batch")
    num_workers: int = Field(0, ge=0, description="render processes (0 = in-process)")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the images")
    seed: int = Field(
        0, description="render seed (the generator's draws: Vec2Face masking, DR-GAN noise z)"
    )


# --------------------------------------------------------------------------------------------------
# elegant (opt-in pipelines elegant and elegant_edit)
class ELEGANTEditParams(Strict):
    fraction: float = Field(
        0.2, ge=0, le=1, description="fraction of the synthetic images that get one edit"
    )
    attributes: list[str] | None = Field(
        None, description="attributes to transfer (None = every trained attribute), cycled"
    )
    strength: float = Field(
        1.0,
        gt=0,
        le=3,
        description="how far the attribute slot moves from the image's towards the exemplar's "
        "(1 = swap it, as the paper; > 1 extrapolates beyond the exemplar: stronger edits)",
    )
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of edited images")
    batch_size: int = Field(128, gt=0, description="images edited per batch")
    seed: int = Field(0, description="seed of the image, attribute and exemplar draws")


class ELEGANTParams(Strict):
    labels_path: str | None = Field(
        None,
        description="attribute labels by path (CelebA-style): a parquet or CSV with a 'path' "
        "column (as in the subset manifest, relative to the image root) and one 0/1 column per "
        "train.attributes name; None = the subset manifest's own columns (FaceWorld)",
    )
    classifier: AttributeClassifierConfig = Field(
        default_factory=AttributeClassifierConfig,
        description="attribute classifier that measures edit success",
    )
    train: ELEGANTTrainConfig = Field(
        default_factory=ELEGANTTrainConfig, description="ELEGANT attribute editor recipe"
    )
    edit: ELEGANTEditParams = Field(
        default_factory=ELEGANTEditParams, description="edit step for the synthetic dataset"
    )

    @model_validator(mode="after")
    def _check_edit_attributes(self):
        unknown = [a for a in self.edit.attributes or [] if a not in self.train.attributes]
        if unknown:
            raise ValueError(
                f"edit.attributes names {unknown}, which are not in train.attributes "
                f"{self.train.attributes}"
            )
        return self


# --------------------------------------------------------------------------------------------------
# sample / render
class SampleParams(Strict):
    config: SampleConfig = Field(default_factory=SampleConfig, description="sampling recipe")
    distribution_centres: str | None = Field(
        None,
        description="a .npy of identity centres [C, D] of ANOTHER set (per-identity mean raw "
        "features from the same teacher) to fit the centre distribution on, so sampling does not "
        "re-draw the training identities (the paper's practice); null = the subset's own centres",
    )


class AttrOPRecognizerModel(BareStateDictRecognizer):
    source: Literal["teacher", "checkpoint"] = Field(
        "teacher",
        description="the teacher (teacher pipeline's checkpoint), or a recognizer by path",
    )
    checkpoint: str | None = Field(
        None,
        description="project checkpoint or insightface-style bare state_dict (source=checkpoint)",
    )
    checkpoint_arch: str | None = Field(
        "iresnet100", description="arch of a bare state_dict (the released files: iresnet100)"
    )


class AttrOPQualityModel(AttrOPRecognizerModel):
    target: float | None = Field(
        None,
        gt=0,
        description="quality (embedding norm) target of every AttrOP image, e.g. 27 for MagFace "
        "IResNet-100; null = the plan's quality_target (a quantile of the teacher's real norms)",
    )

    @model_validator(mode="after")
    def _check_target(self):
        if self.source == "checkpoint" and self.target is None:
            raise ValueError(
                "quality_model.target must be set with source 'checkpoint': the plan's targets "
                "are the teacher's norms; give the quality model's own (27 for MagFace)"
            )
        return self


class AttrOPPoseModel(Strict):
    source: Literal["faceworld", "sixdrepnet"] = Field(
        "faceworld",
        description="the teacher pipeline's yaw/pitch regressor, or a 6DRepNet file by path",
    )
    checkpoint: str | None = Field(
        None, description="6DRepNet_300W_LP_AFLW2000.pth (deploy or train form) for sixdrepnet"
    )


class RenderAttrOPParams(AttrOPConfig):
    """AttrOP settings plus the models it steers with (all part of the render shards' hash)."""

    identity_model: AttrOPRecognizerModel = Field(
        default_factory=AttrOPRecognizerModel,
        description="identity loss recognizer; must embed into the teacher's feature space",
    )
    quality_model: AttrOPQualityModel = Field(
        default_factory=AttrOPQualityModel, description="recognizer whose embedding norm is quality"
    )
    pose_model: AttrOPPoseModel = Field(
        default_factory=AttrOPPoseModel, description="differentiable yaw model"
    )


class RenderParams(RenderSettings):
    attrop_enabled: bool = Field(True, description="run AttrOP on the plan's attrop rows")
    attrop: RenderAttrOPParams = Field(
        default_factory=RenderAttrOPParams, description="AttrOP settings and models"
    )
    export_recordio: bool = Field(False, description="also write <dataset>.rec/.idx")


class MlflowParams(Strict):
    # `register` in the YAML; the field has another name because pydantic models (ABCs) have a
    # `register` method already.
    register_models: bool = Field(
        False,
        alias="register",
        description="register every trained generator and recognizer in the MLflow model registry "
        "(named after its metrics prefix, e.g. vec2face, recognizer_synthetic); they are logged to "
        "the run either way",
    )


# --------------------------------------------------------------------------------------------------
# drgan (opt-in pipelines; the render section is RenderParams)
class DRGANRenderParams(RenderParams):
    # Stated in the file, because the render node reads the raw section with RenderParams,
    # whose default is on.
    attrop_enabled: Literal[False] = Field(
        ...,
        description="false: AttrOP steers vectors in the teacher's feature space, and DR-GAN "
        "renders from its encoder's f",
    )


class DRGANSynthParams(Strict):
    plan: PoseCodePlanConfig = Field(
        default_factory=PoseCodePlanConfig,
        description="identities sampled in the encoder's f space + pose codes per image",
    )
    render: DRGANRenderParams = Field(
        default_factory=lambda: DRGANRenderParams(attrop_enabled=False),
        description="the render node's settings for the DR-GAN set (the render section's "
        "schema, AttrOP off)",
    )
    judge_images: int = Field(
        512, gt=0, description="real images re-rendered to measure identity kept by the judge"
    )
    match_vec2face_images: bool = Field(
        True,
        description="the recognizer on the DR-GAN set trains on as many images as the one on "
        "the Vec2Face set (recognizer pipeline) - the equal-size comparison",
    )


class DRGANParams(Strict):
    train: DRGANTrainConfig = Field(
        default_factory=DRGANTrainConfig, description="DR-GAN pose-code generator recipe"
    )
    synth: DRGANSynthParams = Field(
        default_factory=DRGANSynthParams,
        description="DR-GAN synthetic set, its card and its recognizer (drgan_synth, drgan_eval)",
    )


SCHEMAS: dict[str, type[BaseModel]] = {
    "common": CommonParams,
    "mlflow": MlflowParams,
    "subset": SubsetParams,
    "faceworld": FaceWorldParams,
    "teacher": TeacherParams,
    "vec2face": Vec2FaceParams,
    "sample": SampleParams,
    "render": RenderParams,
    "recognizer": RecognizerParams,
    "evaluate": EvaluateParams,
    "ablation": AblationParams,
    "drgan": DRGANParams,
    "elegant": ELEGANTParams,
}


def _files_defining(section: str, conf_dirs: Iterable[Path]) -> list[str]:
    found = []
    for d in conf_dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.glob("parameters*.yml")) + sorted(d.glob("parameters*/**/*.yml")):
            try:
                data = yaml.safe_load(f.read_text()) or {}
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and section in data:
                found.append(str(f))
    return found


def _format(section: str, err: ValidationError, files: list[str]) -> str:
    where = " / ".join(files) if files else f"the '{section}' parameters section"
    lines = [f"Invalid parameters in {where}:"]
    for e in err.errors():
        key = ".".join([section, *[str(p) for p in e["loc"]]])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown parameter (check the spelling; documented keys are in conf/base)"
        elif e["type"] == "missing":
            msg = "required parameter is missing"
        got = repr(e.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        lines.append(f"  {key}: {msg} (got {got})" if e["type"] != "missing" else f"  {key}: {msg}")
    return "\n".join(lines)


def validate_section(section: str, raw: Any, conf_dirs: Iterable[Path] = ()) -> BaseModel:
    """Validate one section; raises ParameterError naming the file(s) and the key."""
    model = SCHEMAS.get(section)
    if model is None:
        raise ParameterError(f"unknown parameters section '{section}'; known: {sorted(SCHEMAS)}")
    if not isinstance(raw, Mapping):
        files = _files_defining(section, conf_dirs)
        raise ParameterError(
            f"parameters '{section}' in {files or 'config'} must be a mapping, "
            f"got {type(raw).__name__}"
        )
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise ParameterError(_format(section, err, _files_defining(section, conf_dirs))) from None


def validate_all(params: Mapping[str, Any], conf_dirs: Iterable[Path] = ()) -> dict[str, BaseModel]:
    conf_dirs = list(conf_dirs)
    out = {}
    for section, raw in params.items():
        if section not in SCHEMAS:
            files = _files_defining(section, conf_dirs)
            raise ParameterError(
                f"unknown parameters section '{section}' in {files or 'config'}; "
                f"known sections: {sorted(SCHEMAS)}"
            )
        out[section] = validate_section(section, raw, conf_dirs)
    return out
