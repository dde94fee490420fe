"""conf/logging.yml: a rotating info log under the project, usable by Kedro as it stands.

Each check runs in a subprocess: logging configuration is process-wide and would leak into the
other tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO


def _python(cwd: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_logging_yml_configures_a_rotating_info_file(tmp_path):
    (tmp_path / "logs").mkdir()
    out = _python(
        tmp_path,
        f"""
        import logging, logging.config, logging.handlers, yaml
        config = yaml.safe_load(open({str(REPO / "conf" / "logging.yml")!r}))
        logging.config.dictConfig(config)
        files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        assert len(files) == 1 and isinstance(files[0], logging.handlers.RotatingFileHandler)
        assert files[0].maxBytes > 0 and files[0].backupCount > 0, "must rotate"
        logging.getLogger("face_pipelines.pipelines.x").info("project info record")
        logging.getLogger("kedro.runner").info("kedro info record")
        logging.getLogger("face_pipelines.pipelines.x").debug("debug record")
        logging.getLogger("some.library").warning("library warning record")
        logging.shutdown()
        """,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "logs" / "info.log").read_text()
    assert "INFO - project info record" in text
    assert "kedro.runner - INFO - kedro info record" in text
    assert "library warning record" in text
    assert "debug record" not in text


def test_kedro_picks_it_up_and_settings_creates_the_folder(tmp_path):
    """A copy of the project without logs/ (as the tests' temporary projects are) still gets its
    log file: Kedro reads conf/logging.yml from the working directory (its allowlist accepts the
    handlers), and face_pipelines.settings creates the folder."""
    (tmp_path / "conf").mkdir()
    shutil.copy(REPO / "conf" / "logging.yml", tmp_path / "conf" / "logging.yml")
    out = _python(
        tmp_path,
        """
        import logging
        import kedro.framework.project
        import face_pipelines.settings
        logging.getLogger("face_pipelines.pipelines.x").info("after settings")
        logging.shutdown()
        """,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Logging error" not in out.stderr, out.stderr[-3000:]
    text = (tmp_path / "logs" / "info.log").read_text()
    assert "after settings" in text
