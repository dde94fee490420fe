"""Registers the project's pipelines under the names users type after `--pipelines`.

The synthetic-set chain (render -> card -> recognizer -> evaluate) is one set of nodes; every
generator or editor beyond the default Vec2Face one is an instance of it under a Kedro namespace
(`drgan`, `elegant`), plus its own trainer / sampling / card nodes. Each instance maps the chain's
dataset names to `<namespace>_<name>` catalog entries and shares the upstream stages' outputs.
"""

from kedro.pipeline import Pipeline, pipeline

from face_pipelines.pipelines import (
    ablation,
    drgan,
    elegant,
    evaluate,
    recognizer,
    render,
    sample,
    subset,
    teacher,
    vec2face,
)

STAGES = ("subset", "teacher", "vec2face", "sample", "render", "recognizer", "evaluate")
SYNTH = ("subset", "teacher", "vec2face", "sample", "render")

# Upstream outputs an instance reads as they are (the real subset, the teacher's models, the
# default set's recognizers as references); everything else of the chain is the instance's own.
SHARED = {
    "faceworld_info",
    "subset_packed_dir",
    "subset_packed_manifest",
    "teacher_features",
    "teacher_summary",
    "pose_summary",
    "judge_summary",
    "synthetic.summary",
    "real.summary",
}
SHARED_PARAMS = {
    "params:common",
    "params:teacher",
    "params:recognizer",
    "params:evaluate",
    "params:faceworld",
    "params:subset",
}


def chain_instance(
    pipe: Pipeline,
    namespace: str,
    renamed: dict[str, str] | None = None,
    parameters: dict[str, str] | None = None,
    shared: frozenset[str] = frozenset(),
) -> Pipeline:
    """`pipe` under `namespace`: its datasets become `<namespace>_<name>` catalog entries, except
    the default chain's outputs it shares (SHARED, `shared`) and those `renamed` explicitly."""
    renamed = dict(renamed or {})
    keep = SHARED | shared
    datasets = {d for d in pipe.datasets() if not d.startswith("params:") and d != "parameters"}
    names = {d: renamed.get(d, d if d in keep else f"{namespace}_{d}") for d in datasets}
    own_params = {p for node in pipe.nodes for p in node.inputs if p.startswith("params:")}
    params = {p: p for p in own_params if p in SHARED_PARAMS} | dict(parameters or {})
    return pipeline(
        pipe,
        namespace=namespace,
        inputs={d: names[d] for d in pipe.inputs() if d in names},
        outputs={d: names[d] for d in pipe.all_outputs() if d in names},
        parameters=params,
    )


def drgan_synth() -> Pipeline:
    """DR-GAN's sampling, the shared render node with the DR-GAN generator, DR-GAN's card."""
    return chain_instance(
        drgan.create_sample_pipeline()
        + render.create_render_pipeline()
        + drgan.create_card_pipeline(),
        "drgan",
        renamed={"vec2face_report": "drgan_report", "drgan_report": "drgan_report"},
        parameters={"params:render": "params:drgan.synth.render", "params:drgan": "params:drgan"},
    )


def drgan_eval() -> Pipeline:
    """The recognizer on the DR-GAN set (as many images as the Vec2Face-set one) and the shared
    verification table with the encoder, the Vec2Face-set and real recognizers."""
    on_drgan_set = recognizer.create_instance_pipeline(
        "drgan_set", "drgan_recognizer_training_plan", "drgan_synthetic_dataset_info"
    )
    table = evaluate.create_comparison_pipeline(
        {
            "drgan_encoder": "encoder_summary",
            "drgan_set": "drgan_set.summary",
            "vec2face_set": "synthetic.summary",
            "real": "real.summary",
        },
        ratios=(("drgan_set_to_vec2face_set_ratio", "drgan_set", "vec2face_set"),),
    )
    own = chain_instance(
        recognizer.create_matched_plan_pipeline() + drgan.create_encoder_pipeline() + table,
        "drgan",
        renamed={"reference.summary": "synthetic.summary", "drgan_report": "drgan_report"},
        parameters={"params:match_reference_images": "params:drgan.synth.match_vec2face_images"},
        shared=frozenset({"drgan_set.summary"}),
    )
    return on_drgan_set + own


def elegant_eval() -> Pipeline:
    """The recognizer on the edited set (the recognizer plan's count and selection: only the
    edits differ) and the shared verification table next to the unedited-set and real ones."""
    on_edited_set = recognizer.create_instance_pipeline(
        "elegant_set", "recognizer_training_plan", "elegant_synthetic_dataset_info"
    )
    table = evaluate.create_comparison_pipeline(
        {
            "edited_set": "elegant_set.summary",
            "unedited_set": "synthetic.summary",
            "real": "real.summary",
        },
        ratios=(
            ("edited_to_unedited_ratio", "edited_set", "unedited_set"),
            ("edited_to_real_ratio", "edited_set", "real"),
        ),
    )
    return on_edited_set + chain_instance(
        table, "elegant", shared=frozenset({"elegant_set.summary"})
    )


def register_pipelines() -> dict[str, Pipeline]:
    modules = {
        "subset": subset,
        "teacher": teacher,
        "vec2face": vec2face,
        "sample": sample,
        "render": render,
        "recognizer": recognizer,
        "evaluate": evaluate,
    }
    pipes: dict[str, Pipeline] = {name: modules[name].create_pipeline() for name in STAGES}
    pipes["ablation"] = ablation.create_pipeline()  # opt-in, not in __default__
    pipes["drgan"] = drgan.create_pipeline()  # opt-in, not in synth or __default__
    pipes["drgan_synth"] = drgan_synth()  # opt-in: DR-GAN synthetic set + card
    pipes["drgan_eval"] = drgan_eval()  # opt-in: encoder + DR-GAN-set recognizer
    pipes["elegant"] = elegant.create_pipeline()  # opt-in: attribute classifier + ELEGANT editor
    pipes["elegant_edit"] = elegant.create_edit_pipeline()  # opt-in, after render and elegant
    pipes["elegant_eval"] = elegant_eval()  # opt-in: edited-set recognizer
    pipes["synth"] = sum((pipes[n] for n in SYNTH), Pipeline([]))
    pipes["__default__"] = sum((pipes[n] for n in STAGES), Pipeline([]))
    return pipes
