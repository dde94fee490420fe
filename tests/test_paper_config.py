"""conf/paper is the paper's chain: the merged configuration `kedro run --env paper` runs with (base
soft-merged with paper, through the project's own config loader settings) has the paper's values,
validates section by section, builds the paper-sized models, and every file a user must give is
null and, when missing, one line naming its key and the file that goes there."""

from __future__ import annotations

import pytest
import torch

from face_pipelines import settings
from face_pipelines.errors import MissingInputError
from face_pipelines.params import validate_all, validate_section
from tests.conftest import REPO

BENCHMARKS = {"lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"}


@pytest.fixture(scope="module")
def raw_params() -> dict:
    """The merged parameters of `kedro run --env paper` (no WEBFACE4M in the environment)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("WEBFACE4M", raising=False)
    try:
        loader = settings.CONFIG_LOADER_CLASS(
            conf_source=str(REPO / "conf"), env="paper", **settings.CONFIG_LOADER_ARGS
        )
        return loader["parameters"]
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def paper(raw_params) -> dict:
    return validate_all(raw_params, [REPO / "conf" / "base", REPO / "conf" / "paper"])


def test_every_section_validates_and_runs_on_the_gpu_when_there_is_one(paper):
    assert set(paper) >= {"common", "subset", "faceworld", "teacher", "vec2face", "sample"}
    assert set(paper) >= {"render", "recognizer", "evaluate"}
    assert paper["common"].device == "auto"
    assert paper["common"].num_workers > 0
    assert paper["recognizer"].train.num_workers > 0
    assert paper["vec2face"].train.num_workers > 0
    assert paper["recognizer"].train.precision == paper["vec2face"].train.precision == "auto"


def test_subset_is_50k_webface4m_identities_at_112px_by_path(paper):
    s = paper["subset"]
    assert (s.source, s.path, s.n_ids, s.image_size) == ("folder", None, 50_000, 112)
    assert s.max_images >= 1000  # every image of a chosen identity
    assert paper["faceworld"].enabled is False


def test_teacher_is_arcface_iresnet100_raw_512d_by_path(paper):
    t = paper["teacher"]
    assert (t.source, t.checkpoint) == ("checkpoint", None)
    assert t.checkpoint_kwargs() == {"arch": "iresnet100", "input_size": 112, "embedding_dim": 512}
    assert (t.judge.source, t.judge.checkpoint, t.judge.checkpoint_arch) == (
        "checkpoint",
        None,
        "iresnet100",
    )
    assert (t.pose.source, t.pose.checkpoint) == ("checkpoint", None)


def test_generator_is_the_published_model_and_schedule(paper):
    from face_pipelines.models.vec2face import VEC2FACE_PRESETS, Vec2FaceConfig

    v = paper["vec2face"]
    assert (v.source, v.checkpoint) == ("train", None)
    tr = v.train
    effective = Vec2FaceConfig(**{**VEC2FACE_PRESETS[tr.preset], **tr.model}).model_dump()
    published = {**VEC2FACE_PRESETS["paper"], "fp32_transformer": True}
    assert effective == Vec2FaceConfig(**published).model_dump()  # no CPU-sized base key leaks in
    assert (effective["image_size"], effective["width"], effective["depth"]) == (112, 768, 12)
    assert (tr.discriminator_preset, tr.discriminator_scales, tr.gan_kind) == ("paper", 1, "lsgan")
    assert (tr.epochs, tr.gan_start_epoch, tr.warmup_epochs, tr.grad_clip) == (100, 80, 5, 2.0)
    assert tr.batch_size == 128 and tr.lr == pytest.approx(4e-5 * 128 / 112, rel=1e-3)
    assert tr.lr_d == pytest.approx(tr.lr) and tr.betas == (0.9, 0.99)
    assert tr.teacher_view_jitter == 0
    w = tr.weights
    assert (w.pixel, w.identity, w.perceptual, w.ssim, w.tokens, w.gan) == (1, 1, 0.2, 0.1, 1, 1)


def test_sampling_at_0_4_with_the_paper_sigma_mix_and_50_images(paper):
    s = paper["sample"]
    c = s.config
    assert (c.threshold, c.images_per_identity, c.distribution) == (0.4, 50, "pca")
    assert [tuple(x) for x in c.sigma_mix] == [(0.3, 0.4), (0.5, 0.4), (0.7, 0.2)]
    assert c.noise == "per_dim"  # the paper's noise, whatever the CPU default
    assert c.leakage_threshold is None  # = the threshold
    assert c.threshold_margin == 0.0  # sampled at the paper's bar itself
    assert s.distribution_centres is None  # optional: another set's centres by path


def test_attrop_uses_magface_quality_27_and_6drepnet_yaw(paper):
    a = paper["render"].attrop
    assert a.identity_model.source == "teacher"
    q = a.quality_model
    assert (q.source, q.checkpoint, q.target) == ("checkpoint", None, 27.0)
    assert q.checkpoint_kwargs() == {"arch": "iresnet100", "input_size": 112, "embedding_dim": 512}
    assert (a.pose_model.source, a.pose_model.checkpoint) == ("sixdrepnet", None)
    assert (a.lr, a.w_id, a.w_quality, a.w_pose) == (0.1, 100.0, 1.0, 1.0)
    assert a.pose_newton_steps == 0  # upstream's Adam only, whatever the CPU default
    assert paper["render"].attrop_enabled


def test_recognizer_is_the_hsface_recipe(paper):
    from face_pipelines.training.data import AugmentationConfig

    r = paper["recognizer"].train
    assert (r.arch, r.embedding_dim, r.method, r.s, r.m) == ("iresnet50", 512, "arcface", 64, 0.5)
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size) == (0.1, 0.9, 5e-4, 128)
    assert (r.epochs, r.schedule, r.milestones, r.warmup_epochs) == (26, "step", [12, 20, 24], 0)
    assert (r.sample_rate, r.grad_clip, r.devices) == (1.0, 5.0, 1)
    assert AugmentationConfig(**r.augment.model_dump()) == AugmentationConfig.hsface()


def test_evaluation_is_the_five_insightface_benchmarks_by_path(paper):
    e = paper["evaluate"]
    assert e.faceworld_benchmarks is False
    assert e.benchmarks == dict.fromkeys(BENCHMARKS)


def test_the_paper_sized_models_build(paper):
    """Recognizer IResNet-50 (43.6M), teacher IResNet-100 (65.2M), the ~174M generator and the
    patch discriminator, built from the merged values (meta device: no weights allocated)."""
    from face_pipelines.models.discriminator import build_discriminator
    from face_pipelines.models.registry import build_backbone
    from face_pipelines.training.recognizer import _param_groups
    from face_pipelines.training.vec2face import build_generator

    def count(m) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e6

    r, t, v = paper["recognizer"].train, paper["teacher"], paper["vec2face"].train
    with torch.device("meta"):
        recognizer = build_backbone(r.arch, **r.backbone_args(112))
        teacher = build_backbone(t.checkpoint_arch, num_features=512, input_size=112)
        generator = build_generator(v, feat_dim=512, image_size=112)
        disc = build_discriminator(v.discriminator_preset, num_scales=v.discriminator_scales)
    assert count(recognizer) == pytest.approx(43.6, abs=0.1)
    assert count(teacher) == pytest.approx(65.2, abs=0.1)
    assert count(generator) == pytest.approx(173.6, abs=0.5)
    assert generator.config.fp32_transformer
    assert generator.config.grid_embed == "channel_scale"  # the released weights need it
    assert count(disc) > 1
    # No weight decay on BN / PReLU / biases: the 1-D parameters are the zero-decay group.
    decay, no_decay = _param_groups(recognizer, r.weight_decay)
    bn = [
        p
        for m in recognizer.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    ]
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in bn} <= {id(p) for p in no_decay["params"]}


def _one_line(exc: pytest.ExceptionInfo, key: str, what: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and key in message and what in message, message


def test_a_missing_file_is_one_line_naming_its_key(raw_params, tmp_path):
    from face_pipelines.metrics.benchmarks import benchmark_paths
    from face_pipelines.pipelines.render.nodes import _attrop_models
    from face_pipelines.pipelines.subset.nodes import select_subset
    from face_pipelines.pipelines.teacher import nodes as teacher
    from face_pipelines.pipelines.vec2face.nodes import load_generator_checkpoint

    common, t = raw_params["common"], raw_params["teacher"]
    with pytest.raises(MissingInputError) as e:
        select_subset({"enabled": False}, raw_params["subset"], common)
    _one_line(e, "subset.path", "identity-folder root")
    stage = (None, tmp_path, tmp_path, t, common)
    with pytest.raises(MissingInputError) as e:
        teacher.train_teacher(*stage[:3], {}, *stage[3:])
    _one_line(e, "teacher.checkpoint", "arcface-r100-glint360k.pth")
    with pytest.raises(MissingInputError) as e:
        teacher.train_judge(*stage)
    _one_line(e, "teacher.judge.checkpoint", "magface-r100-glint360k.pth")
    with pytest.raises(MissingInputError) as e:
        teacher.train_pose_model(*stage)
    _one_line(e, "teacher.pose.checkpoint", "6DRepNet_300W_LP_AFLW2000.pth")
    with pytest.raises(MissingInputError) as e:  # vec2face.source: checkpoint without the file
        load_generator_checkpoint(raw_params["vec2face"]["checkpoint"], None, tmp_path)
    _one_line(e, "vec2face.checkpoint", "vec2face_generator.pth")

    r = validate_section("render", raw_params["render"])
    tp = validate_section("teacher", t)
    summary = {"checkpoint": str(tmp_path)}
    with pytest.raises(MissingInputError) as e:
        _attrop_models(r.attrop, summary, summary, tp, "cpu")
    _one_line(e, "render.attrop.pose_model.checkpoint", "6DRepNet_300W_LP_AFLW2000.pth")
    given_pose = r.attrop.model_copy(
        update={"pose_model": r.attrop.pose_model.model_copy(update={"checkpoint": str(tmp_path)})}
    )
    with pytest.raises(MissingInputError) as e:
        _attrop_models(given_pose, summary, summary, tp, "cpu")
    _one_line(e, "render.attrop.quality_model.checkpoint", "MagFace")

    with pytest.raises(MissingInputError) as e:
        benchmark_paths(None, False, raw_params["evaluate"]["benchmarks"])
    _one_line(e, "evaluate.benchmarks.lfw", "insightface .bin")
