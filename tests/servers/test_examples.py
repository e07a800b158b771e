"""The examples under a real gunicorn: edit a template and the code, see the new page served.

Each test runs on a copy of examples/ in a temp dir, so the repository is never edited.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import pytest

from .harness import (
    Load,
    Server,
    bin_path,
    free_port,
    get,
    gunicorn_no_control_socket,
    needs_gunicorn_asgi,
    wait_for,
    write,
)
from .reloadhelp import boots, copy_examples, patch, reloads

pytestmark = pytest.mark.server

# Faster than the defaults so the tests take seconds; action="auto" does the real HUP.
FAST = "interval=0.25, settle=0.5,\n"


def gunicorn(tmp_path: Path, target: str, *extra: str) -> Server:
    port = free_port()
    return Server(
        [bin_path("gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
         *gunicorn_no_control_socket(), "--graceful-timeout", "10", *extra, target],
        cwd=tmp_path, port=port, log_path=tmp_path / "gunicorn.log",
    )


def body(port: int) -> str:
    status, data = get(port)
    assert status == 200, data[:300]
    return data.decode()


def edit_and_see(
    server: Server, path: Path, old: str, new: str, expect: str, count: int
) -> None:
    """Edit; wait for reload number ``count``, then for every worker to serve ``expect``."""
    text = path.read_text()
    assert old in text
    write(path, text.replace(old, new))
    # The Reloader acts after a response, so keep requesting while waiting for the reload.
    assert wait_for(lambda: bool(body(server.port)) and reloads(server.log(), 2) >= count,
                    timeout=30, interval=0.1), (
        f"no reload after editing {path.name}\n{server.log()}"
    )
    # Sync workers answer one at a time: several answers in a row means both workers agree.
    served = wait_for(lambda: all(expect in body(server.port) for _ in range(6)), timeout=30,
                      interval=0.1)
    assert served, f"{expect!r} not served after editing {path.name}\n{server.log()}"


def test_flask_example_reloads_template_and_code(tmp_path: Path, servers: List[Server]) -> None:
    pytest.importorskip("flask")
    examples = copy_examples(tmp_path)
    patch(examples / "flask_app.py", "    app.wsgi_app,\n", "    app.wsgi_app,\n    " + FAST)
    server = gunicorn(tmp_path, "examples.flask_app:app")
    servers.append(server.start())
    assert "Hello, world!" in body(server.port)
    with Load(server.port, threads=2, pause=0.02) as load:
        edit_and_see(server, examples / "templates" / "index.html", "<h1>", "<h1>Edited: ",
                     "Edited: Hello, world!", count=1)
        edit_and_see(server, examples / "greeting.py", 'f"Hello, {name}!"', 'f"Howdy, {name}!"',
                     "Edited: Howdy, world!", count=2)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert result.ok > 0
    log = server.log()
    assert reloads(log, 2) == 2, log  # one reload per edit, not one per worker
    assert boots(log) == 6, log


def template_then_code(server: Server, project: Path) -> None:
    """The Django project's template edited, then its view: each served after one reload."""
    assert "Hello from Django" in body(server.port)
    edit_and_see(server, project / "templates" / "hello.html", "<h1>", "<h1>Edited: ",
                 "Edited: Hello from Django", count=1)
    edit_and_see(server, project / "views.py", '"Hello from Django"', '"Bonjour from Django"',
                 "Edited: Bonjour from Django", count=2)
    assert reloads(server.log(), 2) == 2, server.log()


def test_django_example_reloads_template_and_code(tmp_path: Path, servers: List[Server]) -> None:
    pytest.importorskip("django")
    examples = copy_examples(tmp_path)
    patch(examples / "django_wsgi.py", "DjangoReloader(django_app)",
          "DjangoReloader(django_app, " + FAST.strip() + ")")
    server = gunicorn(tmp_path, "examples.django_wsgi:application")
    servers.append(server.start())
    template_then_code(server, examples / "django_project")


def test_starlette_example_reloads_code(tmp_path: Path, servers: List[Server]) -> None:
    examples = copy_examples(tmp_path)
    patch(examples / "starlette_app.py", "lifespan=lifespan)", "lifespan=lifespan), " + FAST)
    server = gunicorn(tmp_path, "examples.starlette_app:app", "-k", "uvicorn_worker.UvicornWorker")
    servers.append(server.start())
    assert "Hello, world!" in body(server.port)
    edit_and_see(server, examples / "greeting.py", 'f"Hello, {name}!"', 'f"Howdy, {name}!"',
                 "Howdy, world!", count=1)
    assert reloads(server.log(), 2) == 1 and boots(server.log()) == 4, server.log()


@needs_gunicorn_asgi
def test_django_asgi_example_reloads_template_and_code(
    tmp_path: Path, servers: List[Server]
) -> None:
    examples = copy_examples(tmp_path)
    patch(examples / "django_asgi.py", "extra_files=django_extra_files()",
          "extra_files=django_extra_files(), " + FAST.strip())
    server = gunicorn(tmp_path, "examples.django_asgi:application", "-k", "asgi")
    servers.append(server.start())
    template_then_code(server, examples / "django_project")


def test_check_command_on_the_examples(tmp_path: Path) -> None:
    """`wsgireload check` on the examples, from the repository root, as the README shows."""
    import subprocess

    from .harness import _repo_root

    for target, expect in [("examples.flask_app:app", "reloader:  app.wsgi_app"),
                           ("examples.django_wsgi:application", "reloader:  app "),
                           ("examples.starlette_app:app", "reloader:  app ")]:
        proc = subprocess.run([sys.executable, "-m", "wsgireload", "check", target],
                              cwd=_repo_root(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert expect in proc.stdout and "examples/" in proc.stdout
