"""The ASGI entry point of the minimal Django example, wrapped for production-safe reloading.

Run it from the repository root (``pip install django gunicorn``)::

    gunicorn -k asgi --workers 2 --bind 127.0.0.1:8000 examples.django_asgi:application

Django's ASGI handler supports no lifespan (the servers serve it without), so each worker
starts watching as gunicorn asks for the lifespan. ``django_extra_files()`` adds the
template and locale directories, because production Django caches compiled templates and
translations.
"""

import os

from django.core.asgi import get_asgi_application
from django.urls import get_resolver

from wsgireload.asgi import Reloader
from wsgireload.contrib.django import django_extra_files

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

django_app = get_asgi_application()
# Django imports the URLconf, and so the views, at the first request: import them now, so a
# view edited between a worker's start and its first request is still seen as a change.
_ = get_resolver().url_patterns

application = Reloader(django_app, extra_files=django_extra_files())
