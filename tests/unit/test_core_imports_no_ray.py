"""The core is pure math: importing every qadwh_ray.core module must not import Ray (DESIGN.md §6)."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_core_modules_do_not_import_ray():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import qadwh_ray.core as core
        names = [m.name for m in pkgutil.walk_packages(core.__path__, "qadwh_ray.core.")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        assert not loaded, f"qadwh_ray.core imported Ray: {loaded[:5]}"
        print(len(names))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 7  # bits, labels, hamming, weights, losses, triplets, metrics
