"""The launcher's side of ``action="exec"``, kept at the address the docs give it."""

from ..servers.standalone import inherited_sockets

__all__ = ["inherited_sockets"]
