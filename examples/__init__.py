"""Runnable examples of wsgireload (run the servers from the repository root).

``flask_app`` (Flask + template + a module of its own) and ``django_wsgi`` (a minimal Django project).
"""
