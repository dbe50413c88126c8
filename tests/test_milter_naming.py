"""The brief's top-level milter/ folder must not shadow pymilter's C module ``milter``.

pymilter installs a C extension named ``milter`` and ``Milter/__init__.py`` does
``import milter``. pytest puts the repository root on ``sys.path``; a package
named ``milter`` there would be imported instead and break ``import Milter``.
The folder therefore holds no ``__init__.py`` (a directory without one is only a
namespace-package candidate, which any real module later on the path beats),
and the importable code lives in ``smtpguard.postfix``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_repository_root_is_on_sys_path_under_pytest() -> None:
    assert str(REPO) in [str(Path(p).resolve()) for p in sys.path if p]


def test_import_Milter_loads_pymilters_c_module() -> None:
    import Milter

    assert Milter.milter.__file__.endswith(".so")
    spec = importlib.util.find_spec("milter")
    assert spec is not None and spec.origin is not None and spec.origin.endswith(".so")


def test_milter_folder_is_not_a_python_package() -> None:
    assert (REPO / "milter").is_dir()
    assert not (REPO / "milter" / "__init__.py").exists()
    assert not (REPO / "milter.py").exists()


def test_import_Milter_from_the_repository_root_in_a_fresh_interpreter() -> None:
    # The current directory comes first on sys.path with -c, as for an operator in a checkout.
    out = subprocess.run(
        [sys.executable, "-c", "import Milter; print(Milter.milter.__file__)"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(".so")


def test_entry_script_in_the_milter_folder_starts_the_command() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "milter" / "smtpguard_milter.py"), "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Run the milter" in out.stdout
