"""l2v_core must stay usable without Ray (ARCHITECTURE.md)."""

import subprocess
import sys


def test_importing_l2v_core_does_not_import_ray():
    code = "import sys, l2v_core, l2v_core.testing; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
