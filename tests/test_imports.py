"""No import cycles among vidfx's modules (scripts/import_cycles.py), and serving stays off the training data."""

from __future__ import annotations

import subprocess
import sys

from tests.serve_harness import REPO


def test_no_import_cycles():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "import_cycles.py"), str(REPO / "vidfx")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout


def test_the_script_finds_a_cycle(tmp_path):
    pkg = tmp_path / "vidfx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from vidfx.b import g\n")
    (pkg / "b.py").write_text("from vidfx import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vidfx import a\n")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "import_cycles.py"), str(pkg)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1 and "vidfx.a ↔ vidfx.b" in out.stdout and "vidfx.c" not in out.stdout


def test_serving_does_not_import_the_training_data_generator():
    code = "import sys, vidfx.node, vidfx.commands.run, vidfx.loading; print('vidfx.data.looks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
