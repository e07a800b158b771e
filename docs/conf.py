"""Sphinx configuration for the wsgireload docs (``sphinx-build -W docs docs/_build/html``)."""

from __future__ import annotations

import os
import sys

# Build from a checkout without installing: autodoc imports the package from here.
sys.path.insert(0, os.path.abspath(".."))

import wsgireload  # noqa: E402

project = "wsgireload"
author = "wsgireload developers"
copyright = "2026, wsgireload developers"
release = wsgireload.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: GitHub-style anchors for headings, so the README's and the pages' links agree.
myst_heading_anchors = 4
myst_enable_extensions = ["deflist"]

# A broken reference is an error (-W); references to the standard library are not checked,
# as there is no network at build time for an intersphinx inventory.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(typing|collections\.abc|os|signal|socket|threading|logging|argparse)\..*"),
    (r"py:class", r"(Callable|Optional|Union|Any|Iterable|Sequence|Mapping|Dict|List|Tuple)"),
    (r"py:class", r"(int|str|float|bool|bytes|object|None|Exception|ValueError)"),
    (r"py:class", r"wsgireload\..*\._[A-Za-z]\w*"),  # private bases are not documented
    # Internal helpers that appear in signatures (injected in tests), not part of the API.
    (r"py:class", r"(Detector|ProcessInfo|ReadProcess)"),
    (r"py:class", r"(System|Siblings)"),  # the system seam and the record, as actions see them
]

autodoc_member_order = "bysource"
# Signatures show names and defaults; the types go beside each documented parameter.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"

html_theme = "furo"
html_title = f"wsgireload {release}"
html_static_path = ["_static"]
html_css_files = ["wrap.css"]
