"""The documentation builds with Sphinx, warnings as errors (as ``tox -e docs``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "doc")

try:
    import sphinx  # noqa: F401
    HAVE_SPHINX = True
except ImportError:  # pragma: no cover - depends on the venv
    HAVE_SPHINX = False


@pytest.mark.skipif(not HAVE_SPHINX,
                    reason="sphinx is not importable; install the test extra: "
                           "pip install -e '.[test]'")
def test_docs_build_without_warnings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
                          "-d", str(tmp_path / "doctrees"), DOC, str(tmp_path / "html")],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    for page in ("index", "installation", "architecture", "configuration", "clouds-policy", "quota",
                 "operations", "multiple-launchers", "fakecloud", "migration", "benchmark"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
