"""Kedro hooks: validate every parameter section before any node runs.

Validation errors name the parameters file(s) that define the section and the offending key, so a user
sees `conf/base/parameters_subset.yml: subset.n_ids: Input should be greater than 0` instead of a
traceback from deep inside a node.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kedro.framework.hooks import hook_impl

from face_pipelines.params import validate_all

log = logging.getLogger(__name__)


class ParameterValidationHooks:
    @hook_impl
    def after_context_created(self, context) -> None:
        conf_root = Path(context.project_path) / "conf"
        env = context.env or "local"
        validate_all(context.params, conf_dirs=[conf_root / "base", conf_root / env])


class DatasetCardSummaryHook:
    """Print the dataset card summary at the end of a run that produced it (e.g. synth)."""

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if "dataset_card" not in pipeline.all_outputs():
            return
        from face_pipelines.reporting.dataset_card import card_summary

        try:
            card = catalog.load("dataset_card")
        except Exception as exc:  # the run itself succeeded; never fail it here
            log.warning("could not read the dataset card for the summary: %s", exc)
            return
        print("\n" + card_summary(card) + "\n", flush=True)


class DvcExperimentTagHook:
    """Tag the MLflow run with the DVC experiment's name under `dvc exp run --name NAME`.

    DVC passes the name to stage commands as $DVC_EXP_NAME; the tag (`dvc_exp`) is what links an
    MLflow run to `dvc exp show` and what `face-pipelines compare` shows in its dvc_exp column.
    """

    @hook_impl
    def before_node_run(self) -> None:
        name = os.environ.get("DVC_EXP_NAME")
        if not name:
            return
        import mlflow

        run = mlflow.active_run()
        if run is not None and run.data.tags.get("dvc_exp") != name:
            mlflow.set_tag("dvc_exp", name)


class LiveTrackingHooks:
    """MLflow around every node: the tracking context live metrics and model logging use
    (face_pipelines.tracking), and `models:/name/version` in any parameter resolved to a local
    checkpoint before the node sees it.

    The context names the node's metrics after its `MlflowMetricsHistoryDataset` output's prefix, so
    live points and kedro-mlflow's end-of-node points share one name; `mlflow.register: true`
    registers every trained model as well as logging it.
    """

    def __init__(self) -> None:
        self._register = False

    @hook_impl
    def after_context_created(self, context) -> None:
        from face_pipelines.params import validate_section

        self._register = validate_section(
            "mlflow", context.params.get("mlflow") or {}
        ).register_models

    @hook_impl
    def before_node_run(self, node, catalog, inputs):
        from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

        from face_pipelines import tracking

        prefix = None
        for name in node.outputs:
            dataset = catalog.get(name)
            if isinstance(dataset, MlflowMetricsHistoryDataset):
                prefix = dataset._prefix
                break
        tracking.begin_node(node.name, prefix, self._register)
        resolved = {
            name: tracking.resolve_model_uris(value, _parameter_key(name))
            for name, value in inputs.items()
            if name.startswith("params:") and tracking.contains_model_uri(value)
        }
        return resolved or None

    @hook_impl
    def after_node_run(self) -> None:
        from face_pipelines import tracking

        tracking.end_node()

    @hook_impl
    def on_node_error(self) -> None:
        from face_pipelines import tracking

        tracking.end_node()


def _parameter_key(input_name: str) -> str:
    """`params:render` -> `parameter render` (how errors name what the user set)."""
    return "parameter " + input_name.removeprefix("params:")
