"""The import contracts of pyproject.toml ([tool.importlinter]) hold: pure packages import no Ray.

Two checks: ``lint-imports`` reads every import statement (those inside functions too) and
checks the contracts; and every module of every pure package is imported in a fresh
interpreter, which must end with no ``ray`` module loaded (catches imports made at run time).
The list of pure packages is the forbidden contract's ``source_modules``, kept only there.
"""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _contracts() -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_lint_imports_keeps_every_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), f"{lint} is missing: install the test extra (pip install -e '.[test]')"
    proc = subprocess.run([str(lint), "pyproject.toml"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in proc.stdout


def test_every_module_of_the_pure_packages_imports_without_ray():
    pure = _contracts()["pure-packages-no-ray"]["source_modules"]
    assert pure, "the forbidden contract lists no pure package"
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        names = []
        for top in {pure!r}:
            module = importlib.import_module(top)
            names.append(top)
            if hasattr(module, "__path__"):
                names += [m.name for m in pkgutil.walk_packages(module.__path__, top + ".")]
        for name in names:
            importlib.import_module(name)
            loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
            assert not loaded, f"importing {{name}} loaded Ray: {{loaded[:5]}}"
        print(len(names))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = 0  # every module was imported, not just the package roots
    for name in pure:
        path = REPO / name.replace(".", "/")
        files += len(list(path.rglob("*.py"))) if path.is_dir() else 1
    assert int(proc.stdout.strip()) == files
