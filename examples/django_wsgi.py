"""The WSGI entry point of the minimal Django example, wrapped for production-safe reloading.

Run it from the repository root (``pip install django gunicorn``)::

    gunicorn --workers 2 --bind 127.0.0.1:8000 examples.django_wsgi:application
    uwsgi --master --workers 2 --http 127.0.0.1:8000 --module examples.django_wsgi:application

DjangoReloader also watches the template and locale directories, because production Django
caches compiled templates and translations.
"""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from wsgireload.contrib.django import DjangoReloader

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

django_app = get_wsgi_application()
# Django imports the URLconf, and so the views, at the first request. Import them now so they
# are part of what the Reloader records at startup: a view edited between a worker's start
# and its first request is then still seen as a change.
_ = get_resolver().url_patterns

application = DjangoReloader(django_app)
