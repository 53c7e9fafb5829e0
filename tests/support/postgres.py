"""A throwaway PostgreSQL server for tests that need a real multi-process Optuna storage.

``server()`` runs ``initdb`` into a fresh temporary directory, starts the server on 127.0.0.1 at a free
port and yields a SQLAlchemy URL for Optuna's RDBStorage; it stops the server and removes the directory
when the ``with`` block ends. ``new_database`` gives a caller a database of its own on that server. The
fixtures ``postgres_url`` (session scope) and ``fresh_database`` in ``tests/conftest.py`` wrap them.
``restartable()`` is the same server as a ``Postgres`` handle that a test may ``stop()`` and ``start()``
again on the same port (a database restart).

PostgreSQL refuses to run as root, so under uid 0 the server commands run as the ``postgres`` system user
(Debian's package creates it; otherwise a system user ``edgepareto-pg`` is created) through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "edgepareto"
DATABASE = "edgepareto"
FALLBACK_SYSTEM_USER = "edgepareto-pg"
TOOLS = ("pg_ctl", "initdb", "postgres")


def find_bindir() -> Path | None:
    """The directory holding pg_ctl, initdb and postgres: PATH first, else the newest Debian install."""
    on_path = [shutil.which(tool) for tool in TOOLS]
    if all(on_path):
        # /usr/local/bin/pg_ctl is often a symlink into /usr/lib/postgresql/N/bin; pg_ctl finds postgres
        # next to its resolved self, so use the real directory.
        return Path(os.path.realpath(on_path[0])).parent  # type: ignore[arg-type]

    def version(d: str) -> tuple[int, ...]:
        name = Path(d).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all((Path(d) / tool).is_file() for tool in TOOLS):
            return Path(d)
    return None


def _server_user() -> str | None:
    """The unprivileged account to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_SYSTEM_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_SYSTEM_USER],
        check=True,
        capture_output=True,
    )
    return FALLBACK_SYSTEM_USER


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no server log: {e})"


class _Server:
    """Runs PostgreSQL's command-line tools, as the unprivileged server user when we are root."""

    def __init__(self, bindir: Path, root: Path, user: str | None) -> None:
        self.bindir, self.root, self.user = bindir, root, user
        self.data, self.log = root / "data", root / "server.log"
        # No PG* variables from the caller's environment (PGDATA, PGPORT, ...) may leak into the tools.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env.update(LC_ALL="C", LANG="C")

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        # cwd inside our directory: the server user may not be able to enter the caller's working directory.
        return subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def _fail(what: str, proc: subprocess.CompletedProcess[str] | None, log: Path | None) -> str:
    parts = [f"PostgreSQL {what} failed"]
    if proc is not None:
        parts.append(f"exit status {proc.returncode}\n{proc.stdout}{proc.stderr}".rstrip())
    if log is not None:
        parts.append(f"server log tail:\n{_tail(log)}")
    return "\n".join(parts)


def _create_database(dsn: str, name: str) -> None:
    """``CREATE DATABASE name`` through a connection to ``dsn`` (a libpq URL)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def new_database(postgres_url: str) -> str:
    """Create a uniquely named database on the server behind ``postgres_url``; return its URL."""
    base, _, _ = postgres_url.rpartition("/")
    name = f"t_{uuid.uuid4().hex[:16]}"
    _create_database(postgres_url.replace("postgresql+psycopg2://", "postgresql://", 1), name)
    return f"{base}/{name}"


def _options(port: int, root: Path) -> str:
    return " ".join(
        f"-c {setting}"
        for setting in (
            f"port={port}",
            "listen_addresses=127.0.0.1",
            f"unix_socket_directories={root}",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=100",
        )
    )


@dataclass(frozen=True)
class Postgres:
    """A running throwaway server: its URL, and a restart in two steps (``stop``, then ``start``)."""

    server: _Server
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def stop(self) -> None:
        """A fast shutdown, as ``systemctl restart postgresql`` does: clients are disconnected."""
        proc = self.server.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.server.data))
        if proc.returncode != 0:
            pytest.fail(_fail("server stop", proc, self.server.log), pytrace=False)

    def start(self) -> None:
        """Start again on the same port and data (the databases and studies are kept)."""
        start = ["start", "-w", "-t", "60", "-D", str(self.server.data), "-l", str(self.server.log),
                 "-o", _options(self.port, self.server.root)]
        proc = self.server.run("pg_ctl", *start, timeout=90)
        if proc.returncode != 0:
            pytest.fail(_fail("server restart", proc, self.server.log), pytrace=False)


@contextmanager
def server() -> Iterator[str]:
    """A throwaway PostgreSQL server: ``postgresql+psycopg2://edgepareto@127.0.0.1:PORT/edgepareto``."""
    with restartable() as postgres:
        yield postgres.url


@contextmanager
def restartable() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server as a handle a test may stop and start again."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL not available: no pg_ctl on PATH or in /usr/lib/postgresql "
            "(CI installs Debian's postgresql package)"
        )
    pytest.importorskip("psycopg2", reason="PostgreSQL tests need psycopg2 (pip install psycopg2-binary)")

    user = _server_user()
    # Not tmp_path_factory: under root its directories are mode 700 and unreachable for the server user, and
    # a short path keeps the Unix socket name under its 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="edgepareto-pg-"))
    if user is not None:
        shutil.chown(root, user=user, group=pwd.getpwnam(user).pw_gid)
    server = _Server(bindir, root, user)
    started = False
    try:
        initdb = ["-D", str(server.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-locale"]
        proc = server.run("initdb", *initdb, "--no-sync")
        if proc.returncode != 0:
            pytest.fail(_fail("initdb", proc, None), pytrace=False)

        for _attempt in range(3):  # another process may take the free port before the server binds it
            port = _free_port()
            start = ["start", "-w", "-t", "60", "-D", str(server.data), "-l", str(server.log),
                     "-o", _options(port, root)]
            proc = server.run("pg_ctl", *start, timeout=90)
            if proc.returncode == 0:
                started = True
                break
            if "could not bind" not in _tail(server.log):
                break
        if not started:
            pytest.fail(_fail("server start", proc, server.log), pytrace=False)

        _create_database(f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres", DATABASE)
        yield Postgres(server, port)
    finally:
        if started:
            proc = server.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(server.data))
            if proc.returncode != 0:
                server.run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(server.data))
        shutil.rmtree(root, ignore_errors=True)
