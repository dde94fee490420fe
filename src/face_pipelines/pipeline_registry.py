"""Registers the project's pipelines under the names users type after `--pipelines`."""

from kedro.pipeline import Pipeline

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
    pipes["drgan_synth"] = drgan.create_synth_pipeline()  # opt-in: DR-GAN synthetic set + card
    pipes["drgan_eval"] = drgan.create_eval_pipeline()  # opt-in: encoder + DR-GAN-set recognizer
    pipes["elegant"] = elegant.create_pipeline()  # opt-in: attribute classifier + ELEGANT editor
    pipes["elegant_edit"] = elegant.create_edit_pipeline()  # opt-in, after render and elegant
    pipes["elegant_eval"] = elegant.create_eval_pipeline()  # opt-in: edited-set recognizer
    pipes["synth"] = sum((pipes[n] for n in SYNTH), Pipeline([]))
    pipes["__default__"] = sum((pipes[n] for n in STAGES), Pipeline([]))
    return pipes
