"""recognizer: one recipe, two namespaced instances - `synthetic` (the rendered dataset) and `real`
(the real subset, the baseline) - trained on the same number of images."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_real_training_set,
    build_synthetic_training_set,
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


def create_pipeline(**kwargs) -> Pipeline:
    plan = Node(
        plan_training_sets,
        inputs=["synthetic_dataset_info", "subset_packed_manifest", "params:recognizer"],
        outputs="recognizer_training_plan",
        name="plan_training_sets",
    )
    synthetic = Node(
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


def synthetic_set_instance(instance: str, plan: str, dataset_info: str) -> Pipeline:
    """Build + train nodes of one more synthetic-set recognizer (the same recipe) under
    `<instance>.*` datasets: the set described by `dataset_info`, subsampled per `plan`.
    Node names: build_<instance>_training_set, train_<instance>_recognizer."""
    return Pipeline(
        [
            Node(
                build_synthetic_training_set,
                inputs=[
                    plan,
                    dataset_info,
                    f"{instance}.packed_dir",
                    "params:recognizer",
                    "params:common",
                ],
                outputs=f"{instance}.training_set",
                name=f"build_{instance.removesuffix('_set')}_training_set",
            ),
            Node(
                train_instance,
                inputs=[
                    f"{instance}.training_set",
                    f"{instance}.model_dir",
                    "params:recognizer",
                    "params:common",
                ],
                outputs=[f"{instance}.summary", f"{instance}.mlflow_metrics"],
                name=f"train_{instance}_recognizer",
            ),
        ]
    )
