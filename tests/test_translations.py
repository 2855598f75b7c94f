"""The Spanish translation is complete and compiled: every string the app marks (the checkout's
pages and messages, the models and admin) has a Spanish text, and the shipped ``django.mo`` says
exactly what ``django.po`` says, so a customer never meets an English line in a Spanish page."""

from __future__ import annotations

import ast
import gettext
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "athm_sync" / "locale" / "es" / "LC_MESSAGES"


def po_entries(path: Path) -> list[dict]:
    """The entries of a ``.po`` file (header and obsolete ones left out): each a dict of its
    ``msgid``, ``msgid_plural``, ``msgstr`` / ``msgstr[N]`` texts and ``fuzzy`` flag."""
    entries = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        entry: dict = {"fuzzy": False}
        current = None
        for line in block.splitlines():
            if line.startswith("#,") and "fuzzy" in line:
                entry["fuzzy"] = True
            elif line.startswith("#"):
                continue
            elif match := re.match(
                r'^(msgid|msgid_plural|msgstr(?:\[\d\])?|msgctxt) (".*")$', line
            ):
                current = match.group(1)
                entry[current] = ast.literal_eval(match.group(2))
            elif line.startswith('"') and current:
                entry[current] += ast.literal_eval(line)
        if entry.get("msgid"):
            entries.append(entry)
    return entries


def untranslated(entries: list[dict]) -> list[str]:
    missing = []
    for entry in entries:
        texts = [value for key, value in entry.items() if key.startswith("msgstr")]
        if entry["fuzzy"] or not texts or not all(texts):
            missing.append(entry["msgid"])
    return missing


def test_every_entry_of_the_spanish_po_is_translated():
    entries = po_entries(LOCALE / "django.po")

    assert len(entries) > 100
    assert untranslated(entries) == []


def test_the_compiled_mo_says_what_the_po_says():
    with (LOCALE / "django.mo").open("rb") as compiled:
        catalog = gettext.GNUTranslations(compiled)

    for entry in po_entries(LOCALE / "django.po"):
        if "msgid_plural" in entry:
            assert catalog.ngettext(entry["msgid"], entry["msgid_plural"], 1) == entry["msgstr[0]"]
            assert catalog.ngettext(entry["msgid"], entry["msgid_plural"], 3) == entry["msgstr[2]"]
        else:
            assert catalog.gettext(entry["msgid"]) == entry["msgstr"], entry["msgid"]


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="needs GNU gettext (xgettext)")
def test_every_string_the_app_marks_is_in_the_po(tmp_path):
    """``makemessages`` run on a copy of the app finds no string the committed .po lacks."""
    app = tmp_path / "athm_sync"
    shutil.copytree(ROOT / "athm_sync", app, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "django", "makemessages", "-l", "es", "--no-location"],
        cwd=app,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    fresh = po_entries(app / "locale" / "es" / "LC_MESSAGES" / "django.po")

    assert untranslated(fresh) == []
    committed = {entry["msgid"] for entry in po_entries(LOCALE / "django.po")}
    assert {entry["msgid"] for entry in fresh} == committed
