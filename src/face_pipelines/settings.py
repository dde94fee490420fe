"""Kedro project settings.

Parameters are soft-merged across environments so that `--env paper` can override a single nested key
(e.g. `faceworld.image_size`) without restating the whole section.
"""

import logging
import os
from pathlib import Path

# Telemetry must never prompt (CI, tests, first runs). Set before any plugin is imported.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# MLflow system metrics (CPU, RAM, disk, network; GPU utilisation/memory/power when NVML sees a GPU)
# are sampled every 10 s during every tracked run, as `system/*` metrics. Set either variable in the
# environment to change it (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns it off).
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10")
# OpenMP threads that wait at a barrier sleep instead of spinning. torch's CPU kernels use OpenMP;
# with the default (spinning) policy a 2-thread process on a 2-core machine that also runs anything
# else (a second pipeline, a test suite, a browser) loses most of its time to threads spinning while
# the other is descheduled: small-backbone training measured 49 img/s spinning vs 599 img/s passive
# at load ~10 (benchmarks/results/omp_wait_policy.json). Must be set before torch is imported, which
# is why it lives here; set OMP_WAIT_POLICY=ACTIVE to get spinning back on a dedicated machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kedro.config import OmegaConfigLoader  # noqa: E402

from face_pipelines.hooks import (  # noqa: E402
    DatasetCardSummaryHook,
    DvcExperimentTagHook,
    LiveTrackingHooks,
    ParameterValidationHooks,
)


def _create_log_folders() -> None:
    """Create the folder of every file handler on the root logger (conf/logging.yml: logs/).

    Kedro configures logging before it imports this module, and a file handler opened with
    `delay: True` fails on every record while its folder is missing (a fresh copy of the project,
    a deleted logs/). Creating it here lets every later record reach the file.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            Path(handler.baseFilename).parent.mkdir(parents=True, exist_ok=True)


_create_log_folders()

HOOKS = (
    ParameterValidationHooks(),
    DatasetCardSummaryHook(),
    DvcExperimentTagHook(),
    LiveTrackingHooks(),
)

CONFIG_LOADER_CLASS = OmegaConfigLoader


def _env(key: str, default: str | None = None) -> str | None:
    """`${env:NAME,default}` in conf files (OmegaConf's oc.env is limited to credentials)."""
    return os.environ.get(key, default)


CONFIG_LOADER_ARGS = {
    "custom_resolvers": {"env": _env},
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**"],
    },
}
