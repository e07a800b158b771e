"""The example app's own module: edit it under a running server and reload the page.

Nothing here knows about wsgireload; it is simply imported, so it is watched.
"""


def greeting(name: str) -> str:
    return f"Hello, {name}!"
