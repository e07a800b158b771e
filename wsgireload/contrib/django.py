"""Django: also watch template and locale files, which production Django caches in memory.

``application = DjangoReloader(get_wsgi_application())`` in your project's ``wsgi.py``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Iterable, List, Set, Union

from .._options import PathSpec, as_list
from ..middleware import Reloader, WSGIApp

__all__ = ["DjangoReloader", "django_extra_files"]


def _django(name: str) -> Any:
    # Imported on use, by name: wsgireload itself never needs Django (nor its type stubs).
    return importlib.import_module(name)


def template_dirs() -> List[str]:
    """Template directories of every configured engine: ``DIRS`` plus each app's ``templates``."""
    engines = _django("django.template").engines
    get_app_template_dirs = _django("django.template.utils").get_app_template_dirs
    found: Set[str] = set()
    for engine in engines.all():
        found.update(os.fspath(d) for d in getattr(engine, "dirs", ()) or ())
        if getattr(engine, "app_dirs", False):
            found.update(os.fspath(d) for d in get_app_template_dirs(engine.app_dirname))
    return _outside_django(found)


def locale_dirs() -> List[str]:
    """``LOCALE_PATHS`` plus the ``locale`` directory of every installed app (Django excepted)."""
    apps = _django("django.apps").apps
    settings = _django("django.conf").settings

    found: Set[str] = {os.fspath(p) for p in getattr(settings, "LOCALE_PATHS", ())}
    for config in apps.get_app_configs():
        found.add(os.path.join(config.path, "locale"))
    return _outside_django(found)


def _outside_django(dirs: Iterable[str]) -> List[str]:
    """``dirs`` made absolute, sorted, without those inside Django itself: only a Django upgrade
    changes them, and that changes its modules too."""
    django_dir = os.path.join(os.path.dirname(os.path.abspath(_django("django").__file__)), "")
    return sorted(d for d in map(os.path.abspath, dirs) if not d.startswith(django_dir))


def django_extra_files() -> List[str]:
    """Glob patterns for Django's templates (every file) and compiled translations (``*.mo``).

    Call it after ``django.setup()`` (``get_wsgi_application()`` does that).
    """
    patterns = [os.path.join(d, "**", "*") for d in template_dirs()]
    patterns += [os.path.join(d, "**", "*.mo") for d in locale_dirs()]
    return patterns


class DjangoReloader(Reloader):
    """A :class:`~wsgireload.Reloader` that also watches Django's templates and translations.

    ::

        application = DjangoReloader(get_wsgi_application())

    Takes every Reloader option; ``extra_files`` adds to the Django patterns.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        extra_files: Union[PathSpec, Iterable[PathSpec]] = (),
        **options: Any,
    ) -> None:
        patterns = [*django_extra_files(), *as_list("extra_files", extra_files)]
        super().__init__(app, extra_files=patterns, **options)
