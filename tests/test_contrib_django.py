"""The Django helpers: templates and locales watched, DjangoReloader in process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]

DJANGO_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["DJANGO_SETTINGS_MODULE"] = "examples.django_project.settings"
import django
django.setup()
from wsgireload.contrib.django import django_extra_files
print(json.dumps(django_extra_files()))
"""


def test_django_extra_files_lists_templates_and_locales() -> None:
    pytest.importorskip("django")
    proc = subprocess.run([sys.executable, "-c", DJANGO_PROBE, str(REPO)], capture_output=True,
                          text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    patterns = json.loads(proc.stdout)
    project = REPO / "examples" / "django_project"
    assert str(project / "templates" / "**" / "*") in patterns
    assert str(project / "locale" / "**" / "*.mo") in patterns
    assert not any("site-packages/django" in p for p in patterns)  # Django's own: skipped


def test_django_reloader_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """DjangoReloader adds Django's patterns to the user's (Django is set up once per process)."""
    pytest.importorskip("django")
    import django
    from django.conf import settings

    wanted = "examples.django_project.settings"
    if settings.configured and getattr(settings, "SETTINGS_MODULE", None) != wanted:
        pytest.skip("Django already set up with other settings in this process")
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", wanted)
    django.setup()
    from wsgireload.contrib.django import DjangoReloader

    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        return []

    reloader = DjangoReloader(app, extra_files=[str(REPO / "pyproject.toml")], action="log-only")
    watched = reloader.detector.watched()
    assert str(REPO / "examples" / "django_project" / "templates" / "hello.html") in watched
    assert str(REPO / "pyproject.toml") in watched
