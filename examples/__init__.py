"""Runnable examples of wsgireload (run the servers from the repository root).

``flask_app`` (Flask, a template, a module of its own); ``django_wsgi`` (a minimal Django project).
"""
