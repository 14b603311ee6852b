"""Make the test model package ``tests/plugins/ddsd_test_models`` importable, as a user makes their own code
importable: its folder on ``sys.path`` (this process) and on ``PYTHONPATH`` (``python -m ddsd`` subprocesses)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent / "plugins"
SPEC = "ddsd_test_models.nets:tiny_fcn"
SRC = Path(__file__).resolve().parents[1] / "src"


@contextmanager
def user_package_on_path() -> Iterator[Path]:
    """``tests/plugins`` on ``sys.path`` and ``PYTHONPATH`` (with ``src`` first) for the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGINS))
        parts = [str(SRC), str(PLUGINS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        mp.setenv("PYTHONPATH", os.pathsep.join(parts))
        yield PLUGINS
    sys.modules.pop("ddsd_test_models.nets", None)
    sys.modules.pop("ddsd_test_models", None)
