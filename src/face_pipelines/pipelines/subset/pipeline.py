"""subset: raw faces -> chosen identities -> manifest + packed training-ready copy + stats."""

from kedro.pipeline import Node, Pipeline

from .nodes import materialise_faceworld_pools, pack_selected, select_subset, summarise_subset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                materialise_faceworld_pools,
                inputs=["faceworld_dir", "params:faceworld", "params:common"],
                outputs="faceworld_info",
                name="materialise_faceworld",
            ),
            Node(
                select_subset,
                inputs=["faceworld_info", "params:subset", "params:common"],
                outputs=["subset_manifest", "subset_scan_report"],
                name="select_subset",
            ),
            Node(
                pack_selected,
                inputs=[
                    "subset_manifest",
                    "faceworld_info",
                    "subset_packed_dir",
                    "params:subset",
                    "params:common",
                ],
                outputs=["subset_packed_manifest", "subset_pack_report"],
                name="pack_subset",
            ),
            Node(
                summarise_subset,
                inputs=["subset_packed_manifest", "subset_pack_report"],
                outputs=[
                    "subset_stats",
                    "subset_images_per_identity_plot",
                    "subset_mlflow_metrics",
                ],
                name="summarise_subset",
            ),
        ]
    )
