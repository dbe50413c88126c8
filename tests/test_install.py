"""``make install``, staged under a temporary root (DESTDIR): what an installed smtpguard is.

Nothing here touches the machine's /etc, /opt or /usr: the install runs with
DESTDIR, and systemd's own tools inspect that root (``systemd-analyze
--root``, ``systemd-sysusers --root``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smtpguard import config
from tests.fixtures.cli import REPO

UNIT = "/etc/systemd/system/smtpguard.service"
#: Every unit make install writes, and the command each one runs.
UNITS = {
    UNIT: "serve",
    "/etc/systemd/system/smtpguard-milter.service": "milter",
    "/etc/systemd/system/smtpguard-policy.service": "policy",
}


def make_install(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    return subprocess.run(
        ["make", "--no-print-directory", "install", f"DESTDIR={root}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    r = make_install(root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root


def inside(root: Path, path: str) -> Path:
    """``path`` of the installed system, under ``root``; absolute symlinks resolve in it."""
    p = root / path.lstrip("/")
    for _ in range(10):
        if not p.is_symlink():
            return p
        target = os.readlink(p)
        p = root / target.lstrip("/") if target.startswith("/") else p.parent / target
    raise AssertionError(f"symlink loop at {path}")


def unit_values(root: Path, key: str, unit: str = UNIT) -> list[str]:
    text = (root / unit.lstrip("/")).read_text()
    return re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(root: Path, unit: str) -> None:
    units = root / "usr/lib/systemd/system"  # the targets the unit orders itself against
    if not units.exists():
        shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    r = subprocess.run(
        ["systemd-analyze", f"--root={root}", "verify", unit],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (r.returncode, r.stderr.strip()) == (0, ""), r.stdout + r.stderr


@pytest.mark.parametrize(("unit", "command"), UNITS.items())
def test_unit_runs_the_installed_command_on_the_installed_config(
    root: Path, unit: str, command: str
) -> None:
    (exec_start,) = unit_values(root, "ExecStart", unit)
    binary, *args = exec_start.split()
    assert os.access(inside(root, binary), os.X_OK)
    assert args[:2] == ["--config", "/etc/smtpguard/smtpguard.toml"] and args[-1] == command
    assert inside(root, args[1]).is_file()
    assert "--data-dir" not in args  # the config names the database, for the CLI too


@pytest.mark.parametrize("unit", UNITS)
def test_documentation_links_are_installed_files(root: Path, unit: str) -> None:
    links = unit_values(root, "Documentation", unit)
    assert links
    for link in links:
        assert link.startswith("file:///"), link
        assert inside(root, link.removeprefix("file://")).is_file(), link


def test_installed_config_names_the_state_directory(root: Path) -> None:
    cfg = config.load(inside(root, "/etc/smtpguard/smtpguard.toml"))
    assert cfg.store.data_dir == "/var/lib/smtpguard"
    assert dataclasses.replace(cfg, store=config.StoreConfig()) == config.Config()
    assert inside(root, "/var/lib/smtpguard").is_dir()


def test_installed_command_runs_from_its_venv(root: Path) -> None:
    venv_python = root / "opt/smtpguard/bin/python"  # a link to the system's python3
    r = subprocess.run(
        [str(venv_python), "-m", "smtpguard", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "smtpguard" in r.stdout, r.stderr
    # Staged with DESTDIR, the scripts name the final location, not the staging root.
    assert (
        (root / "opt/smtpguard/bin/smtpguard").read_text().startswith("#!/opt/smtpguard/bin/python")
    )
    assert str(root) not in (root / "opt/smtpguard/pyvenv.cfg").read_text()


def test_sysusers_file_creates_the_system_user(root: Path) -> None:
    r = subprocess.run(
        ["systemd-sysusers", f"--root={root}"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    passwd = (root / "etc/passwd").read_text()
    assert re.search(
        r"^smtpguard:x:\d+:\d+:[^:]*:/var/lib/smtpguard:/usr/sbin/nologin$", passwd, re.M
    )


def test_reinstall_keeps_the_operators_config(root: Path) -> None:
    conf = root / "etc/smtpguard/smtpguard.toml"
    edited = conf.read_text() + '\n[dsn]\nnext_hop = "127.0.0.1:2525"\n'
    conf.write_text(edited)
    r = make_install(root)
    assert r.returncode == 0, r.stderr
    assert f"install: kept {conf}" in r.stdout
    assert conf.read_text() == edited
