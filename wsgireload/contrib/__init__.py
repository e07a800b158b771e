"""Integrations that import a framework or a server: import each submodule only where it runs.

``gunicorn`` (config hooks), ``uwsgi`` (a timer), ``django`` (template and locale files).
"""
