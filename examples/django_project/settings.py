"""Settings of the minimal Django project behind ``examples/django_wsgi.py``.

Production-like on purpose (DEBUG off, so Django caches compiled templates).
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["examples.django_project"]  # an app, so its templates/ dir is found too
MIDDLEWARE: list = []
ROOT_URLCONF = "examples.django_project.urls"
WSGI_APPLICATION = "examples.django_wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
    }
]
DATABASES: dict = {}
USE_I18N = True
LOCALE_PATHS = [BASE_DIR / "locale"]
