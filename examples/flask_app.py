"""A small Flask app with production-safe reloading: edit greeting.py or the template, reload.

Run it from the repository root, after ``pip install -e . flask gunicorn``::

    gunicorn --workers 2 --bind 127.0.0.1:8000 examples.flask_app:app
    uwsgi --master --workers 2 --http 127.0.0.1:8000 --module examples.flask_app:app

then open http://127.0.0.1:8000/, edit ``examples/greeting.py`` or
``examples/templates/index.html`` and reload the page: about two seconds after the last save
(one scan interval plus the settle time) the server reloads gracefully, once.
"""

import logging
import os

from flask import Flask, render_template

from wsgireload import Reloader

from .greeting import greeting

# Not resolved: with a symlink-swap deploy (`current` -> releases/N) the template path must
# go through `current`, as the app's imports do, so that the swap is seen as a change.
HERE = os.path.dirname(os.path.abspath(__file__))

# wsgireload logs through logging.getLogger("wsgireload") and adds no handler of its own; an
# app shows its INFO lines (one per reload) and ERRORs (a broken file) like this.
logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s")

app = Flask(__name__)


@app.route("/")
def index() -> str:
    return render_template("index.html", message=greeting("world"), pid=os.getpid())


# Flask caches compiled templates outside debug mode, so templates are watched too. Wrapping
# app.wsgi_app (not app) keeps `app` a Flask object: `gunicorn examples.flask_app:app`,
# `flask --app` and test clients all go through the Reloader.
app.wsgi_app = Reloader(  # type: ignore[method-assign]
    app.wsgi_app,
    extra_files=[os.path.join(HERE, "templates", "**", "*.html")],
)
