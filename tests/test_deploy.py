"""The deployment files shipped in the package, checked by the real tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import athm_sync

DEPLOY = Path(athm_sync.__file__).parent / "deploy"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """The units as a shop installs them: its paths, its user, its environment file."""
    env = tmp_path / "env"
    env.write_text("DJANGO_SETTINGS_MODULE=shop.settings\n")
    service = (DEPLOY / "athm-sync.service").read_text()
    for shipped, local in (
        ("/srv/shop/.venv/bin/python", sys.executable),
        ("/srv/shop", str(tmp_path)),
        ("/etc/athm-sync/env", str(env)),
        ("User=shop", "User=daemon"),
        ("Group=shop", "Group=daemon"),
    ):
        assert shipped in service
        service = service.replace(shipped, local)
    (tmp_path / "athm-sync.service").write_text(service)
    shutil.copy(DEPLOY / "athm-sync.timer", tmp_path / "athm-sync.timer")

    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "athm-sync.service", "athm-sync.timer"],  # noqa: S607
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "athm-sync" not in result.stderr, result.stderr  # not even a warning


def test_the_units_say_what_the_readme_promises():
    service = (DEPLOY / "athm-sync.service").read_text()
    timer = (DEPLOY / "athm-sync.timer").read_text()
    for line in ("Type=oneshot", "User=shop", "EnvironmentFile=", "TimeoutStartSec="):
        assert line in service
    for line in ("OnCalendar=*-*-* *:*:00", "Persistent=true", "RandomizedDelaySec="):
        assert line in timer


def test_the_units_and_templates_are_in_the_built_wheel(tmp_path):
    """A pip user gets them: they are package data of the wheel ``pip install`` builds."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("django_athm_sync-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {
        "athm_sync/deploy/athm-sync.service",
        "athm_sync/deploy/athm-sync.timer",
        "athm_sync/templates/admin/athm_sync/payment/refund.html",
    } <= names
