"""recognizer: one recipe, two namespaced instances - `synthetic` (the rendered dataset) and `real`
(the real subset, the baseline) - trained on the same number of images; further synthetic sets
(DR-GAN's, the ELEGANT-edited one) are more instances of the same nodes (create_instance_pipeline)."""

from kedro.pipeline import Node, Pipeline, pipeline

from .nodes import (
    build_real_training_set,
    build_synthetic_training_set,
    plan_matched_training_set,
    plan_training_sets,
    train_instance,
)

_SHARED = {
    "recognizer_training_plan",
    "synthetic_dataset_info",
    "subset_packed_manifest",
    "subset_packed_dir",
}


def _instance(name: str, build: Node) -> Pipeline:
    train = Node(
        train_instance,
        inputs=["training_set", "model_dir", "params:recognizer", "params:common"],
        outputs=["summary", "mlflow_metrics"],
        name="train_recognizer",
    )
    return Pipeline(
        [build, train],
        namespace=name,
        inputs={i for i in _SHARED if i in build.inputs},
        parameters={"params:recognizer", "params:common"},
    )


def _build_synthetic() -> Node:
    """A synthetic set (its dataset info) subsampled per the plan, as a training set."""
    return Node(
        build_synthetic_training_set,
        inputs=[
            "recognizer_training_plan",
            "synthetic_dataset_info",
            "packed_dir",
            "params:recognizer",
            "params:common",
        ],
        outputs="training_set",
        name="build_training_set",
    )


def create_pipeline(**kwargs) -> Pipeline:
    plan = Node(
        plan_training_sets,
        inputs=[
            "synthetic_dataset_info",
            "subset_packed_manifest",
            "params:recognizer",
            "params:common",
        ],
        outputs="recognizer_training_plan",
        name="plan_training_sets",
    )
    synthetic = _build_synthetic()
    real = Node(
        build_real_training_set,
        inputs=[
            "recognizer_training_plan",
            "subset_packed_manifest",
            "subset_packed_dir",
            "packed_dir",
            "params:common",
        ],
        outputs="training_set",
        name="build_training_set",
    )
    return Pipeline([plan]) + _instance("synthetic", synthetic) + _instance("real", real)


def create_instance_pipeline(instance: str, plan: str, dataset_info: str) -> Pipeline:
    """One more synthetic-set recognizer (the same recipe), namespaced `<instance>`: the set
    described by `dataset_info`, subsampled per `plan`. Datasets `<instance>.packed_dir`,
    `.training_set`, `.model_dir`, `.summary`, `.mlflow_metrics`."""
    renamed = {"recognizer_training_plan": plan, "synthetic_dataset_info": dataset_info}
    return pipeline(_instance(instance, _build_synthetic()), inputs=renamed)


def create_matched_plan_pipeline(**kwargs) -> Pipeline:
    """The training plan of a further set's recognizer: as many images as `reference.summary`'s
    recognizer trained on (when `params:match_reference_images`). Instantiated under a namespace
    by pipeline_registry, which maps the reference and the flag."""
    return Pipeline(
        [
            Node(
                plan_matched_training_set,
                inputs=[
                    "synthetic_dataset_info",
                    "reference.summary",
                    "params:recognizer",
                    "params:match_reference_images",
                    "params:common",
                ],
                outputs="recognizer_training_plan",
                name="plan_matched_training_set",
            )
        ]
    )
