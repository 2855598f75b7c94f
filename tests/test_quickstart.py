"""The README's quick start, followed in a fresh ``django-admin startproject``, and the docs'
links: the README is the user's manual, so what it says must work as written.

The code comes from README.md itself: each block the quick start marks with
``<!-- quickstart: NAME -->`` is written into the new project (settings, URLs, receivers, the
app config, the ``track`` call) or run (the ``manage.py`` commands). Only what the README
leaves to the shop is the test's own: the ``orders`` app's ``Order`` model and its e-mail
function. The project runs as real processes (``manage.py``) against the sandbox ATH Móvil
server on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from athm_sync.sandbox import SandboxServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Pages other branches write; the README links to them before they are merged.
PAGES_WRITTEN_ELSEWHERE = {
    DOCS / "testing.md",
    DOCS / "coming-from-django-athm.md",
    DOCS / "task-queues.md",
}
SANDBOX_URL_IN_README = "http://127.0.0.1:8765"
TIMEOUT = 120

_MARKED_BLOCK = re.compile(r"<!-- quickstart: (\S+) -->\n```\w*\n(.*?)\n```", re.S)
_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
# "... stops it. ## Trying it": prose, then what was meant as a heading, on one line.
_GLUED_HEADING = re.compile(r"^\s*[^\s#|].*\s#{2,6} \S")

# The shop's own code, which the README leaves to the reader.
ORDER_MODELS = """\
from django.db import models


class Order(models.Model):
    reference = models.CharField(max_length=40, unique=True)
    status = models.CharField(max_length=20, default="new")
"""
ORDER_EMAILS = """\
from pathlib import Path

SENT = Path(__file__).resolve().parent.parent / "emails-sent.txt"


def send_confirmation_email(order):
    with SENT.open("a") as sent:
        sent.write(f"{order.reference} {order.status}\\n")
"""


def quickstart_blocks() -> dict[str, str]:
    """The README's marked code blocks, by name."""
    blocks = dict(_MARKED_BLOCK.findall(README.read_text(encoding="utf-8")))
    expected = {"settings", "urls", "commands", "track", "receivers", "apps", "sandbox"}
    missing = expected - set(blocks)
    assert not missing, f"README.md lost its quick-start blocks: {sorted(missing)}"
    return blocks


def manage_commands(block: str) -> list[list[str]]:
    """Each ``python manage.py ...`` line of a shell block, comments dropped, as argv."""
    commands = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[:2] == ["python", "manage.py"], f"not a manage.py line: {line!r}"
            commands.append(argv[1:])
    return commands


class Project:
    """A Django project made by ``startproject`` in a folder, run as real processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # This checkout's athm_sync, not whichever copy the shared virtualenv installed.
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # As in the suite (setup.cfg): a deprecation in the quick start's code is a failure.
        self.env["PYTHONWARNINGS"] = "error::DeprecationWarning,error::PendingDeprecationWarning"
        for name in ("DJANGO_SETTINGS_MODULE", "ATHM_PUBLIC_TOKEN", "ATHM_PRIVATE_TOKEN"):
            self.env.pop(name, None)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
            [sys.executable, *argv],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if check:
            assert result.returncode == 0, (argv, result.stdout, result.stderr)
        return result

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("manage.py", *args, check=check)

    def shell(self, code: str) -> list[str]:
        """What ``code`` printed, one line each (without Django's own line about imports)."""
        lines = self.manage("shell", "-c", code).stdout.splitlines()
        return [line for line in lines if line and "imported automatically" not in line]

    def append(self, relative: str, text: str) -> None:
        with (self.path / relative).open("a", encoding="utf-8") as file:
            file.write(f"\n{text}\n")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """``django-admin startproject shop`` and ``startapp orders``, untouched otherwise."""
    site = tmp_path / "site"
    site.mkdir()
    project = Project(site)
    project.run("-m", "django", "startproject", "shop", str(site))
    project.manage("startapp", "orders")
    return project


def test_the_quick_start_works_as_written(project: Project, sandbox: SandboxServer) -> None:
    blocks = quickstart_blocks()
    # 1. Settings and 2. URLs, as the README shows them.
    project.append("shop/settings.py", blocks["settings"])
    project.append("shop/urls.py", blocks["urls"])
    # The shop's own app, whose receivers step 5 writes.
    project.append("shop/settings.py", 'INSTALLED_APPS += ["orders"]')
    (project.path / "orders/models.py").write_text(ORDER_MODELS)
    (project.path / "orders/emails.py").write_text(ORDER_EMAILS)
    (project.path / "orders/receivers.py").write_text(blocks["receivers"] + "\n")
    (project.path / "orders/apps.py").write_text(blocks["apps"] + "\n")
    project.manage("makemigrations", "orders")

    # Without the tokens (CI, a new developer): migrate and check run, check --deploy says so.
    commands = manage_commands(blocks["commands"])
    assert ["manage.py", "migrate"] in commands
    assert project.manage("check", "athm_sync").returncode == 0
    deploy = project.manage("check", "--deploy", "--tag", "athm_sync", check=False)
    assert deploy.returncode == 1
    assert "athm_sync.E002" in deploy.stderr
    assert "athm_sync.E003" in deploy.stderr

    # 3. With the tokens in the environment, every command of the block succeeds.
    project.env["ATHM_PUBLIC_TOKEN"] = "sandbox-public-token"
    project.env["ATHM_PRIVATE_TOKEN"] = "sandbox-private-token"
    for argv in commands:
        project.run(*argv)

    # Trying it without ATH Móvil: the sandbox block, on the port this test's sandbox has.
    assert SANDBOX_URL_IN_README in blocks["sandbox"]
    project.append(
        "shop/settings.py", blocks["sandbox"].replace(SANDBOX_URL_IN_README, sandbox.url)
    )
    project.env.pop("ATHM_PUBLIC_TOKEN")  # the sandbox block names the sandbox's own tokens
    project.env.pop("ATHM_PRIVATE_TOKEN")
    assert project.manage("check", "--deploy", "--tag", "athm_sync").returncode == 0

    # 4. The customer's browser creates a payment; the shop tracks it with the README's call.
    ecommerce_id, _ = sandbox.create_payment(total="12.50", metadata1="order-7")
    tracked = project.shell(
        "from orders.models import Order\n"
        'order = Order.objects.create(reference="order-7")\n'
        f"ecommerce_id = {ecommerce_id!r}\n"
        f"{blocks['track']}\n"
        "print(payment.status, payment.total)\n"
    )
    assert tracked == ["OPEN 12.50"]

    # The customer pays; the scheduled command finds it and the README's receiver runs.
    sandbox.complete(ecommerce_id)
    result = project.manage("athm_sync", "--json")
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 0
    assert summary["checked"] == 1
    assert summary["transitions"]["completed"] == 1
    assert summary["signals_sent"] == 1
    assert summary["receiver_errors"] == 0

    stored = project.shell(
        "from athm_sync.models import Payment\n"
        "from orders.models import Order\n"
        f"print(Payment.objects.get(pk={ecommerce_id!r}).status)\n"
        'print(Order.objects.get(reference="order-7").status)\n'
    )
    assert stored == ["COMPLETED", "paid"]
    # The e-mail registered with transaction.on_commit went out once, after the commit.
    assert (project.path / "emails-sent.txt").read_text() == "order-7 paid\n"

    # A second run has nothing left to do: the signal is not sent again.
    again = json.loads(project.manage("athm_sync", "--json").stdout)
    assert again["exit_code"] == 0
    assert again["signals_sent"] == 0
    assert (project.path / "emails-sent.txt").read_text() == "order-7 paid\n"


# -- links ---------------------------------------------------------------------------------


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(
        char
        for char in text
        if char in " -_" or unicodedata.category(char)[0] in "LN"  # letters and digits
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    links = []
    for line in prose_lines(path):
        for target in _LINK.findall(line):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # not http:, https:, mailto:...
                links.append(target)
    return links


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.name)
def test_every_relative_link_leads_somewhere(path: Path) -> None:
    broken = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if file in PAGES_WRITTEN_ELSEWHERE and not file.exists():
            continue
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading #{anchor} in {file.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.name)
def test_every_heading_is_a_line_of_its_own(path: Path) -> None:
    # A heading glued to the paragraph before it renders as prose, and its anchor is lost.
    lines = prose_lines(path)
    glued = [line for line in lines if _GLUED_HEADING.search(line)]
    crowded = [
        line
        for before, line in zip(["", *lines], lines, strict=False)
        if _HEADING.match(line) and before.strip()
    ]
    assert not glued, f"{path.name}: a heading inside a line: {glued}"
    assert not crowded, f"{path.name}: a heading with no blank line before it: {crowded}"


def test_the_slugs_follow_github() -> None:
    assert slug("Watch mode: `--watch`, for containers and supervisors") == (
        "watch-mode---watch-for-containers-and-supervisors"
    )
    assert slug("Importing history: backfill") == "importing-history-backfill"
    assert slug("Subscribing: `manage.py athm_subscribe`") == "subscribing-managepy-athm_subscribe"
