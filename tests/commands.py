"""Running the app's management commands as a test sees them: in this process, or as the real
process cron and systemd start (its exit status, stdout and stderr)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


def call(command: str, *args: str, stderr: io.StringIO | None = None) -> tuple[int, str, str]:
    """``call_command`` with captured output; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


def run_process(
    command: str,
    *args: str,
    settings: str = "tests.settings",
    extra_path: Path | None = None,
    sandbox_url: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``python -m django <command> ...`` as a real process.

    ``extra_path`` holds a settings module a test wrote (named by ``settings``); ``sandbox_url``
    points the child's ATH Móvil at the sandbox (else at a closed port). ``env``, when given,
    is the child's whole environment instead (``tests.test_overlap.child_env``: the test's
    own database).
    """
    if env is None:
        python_path = [str(ROOT), *([str(extra_path)] if extra_path else [])]
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings,
            "PYTHONPATH": os.pathsep.join(python_path),
        }
        env.pop("ATHM_TEST_API_BASE_URL", None)
        if sandbox_url:
            env["ATHM_TEST_API_BASE_URL"] = sandbox_url
    return subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "django", command, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -c script`` by a new interpreter of ours in this checkout's root, with
    ``env`` (this checkout put first on its ``PYTHONPATH``)."""
    python_path = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
