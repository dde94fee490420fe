"""Kedro hooks: validate every parameter section before any node runs.

Validation errors name the parameters file(s) that define the section and the offending key, so a user
sees `conf/base/parameters_subset.yml: subset.n_ids: Input should be greater than 0` instead of a
traceback from deep inside a node.
"""

from __future__ import annotations

import logging
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
