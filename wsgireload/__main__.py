"""``python -m wsgireload``: the same command line as the ``wsgireload`` script.

See ``wsgireload.cli`` for the commands.
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
