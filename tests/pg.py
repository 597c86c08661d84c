"""A real PostgreSQL server for tests: Debian's ``postgresql``, started in a temporary directory.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
unprivileged user ``nobody`` (``runuser``); otherwise as the current user. It listens on
127.0.0.1 on a free port, with password authentication (scram-sha-256) for the role
``lrctl``, so tests exercise passwords the way a deployment does. Each test gets a fresh
database (:meth:`PostgresServer.create_database`).

``scripts/install-postgres.sh`` (run by ``scripts/test.sh``) installs the package.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PASSWORD", "USER", "PostgresServer", "find_bindir", "pg_url", "postgres"]

USER = "lrctl"
PASSWORD = "s3cret-Pg-pw"  # a test-only password; tests assert it never shows in output


def find_bindir() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/N/bin`` holding ``initdb``, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """initdb + pg_ctl start in a temporary directory; :meth:`stop` removes everything."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: run scripts/install-postgres.sh "
                "(Debian package postgresql)"
            )
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="lrctl-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "nobody", "--"]
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "nobody")

    def _run(self, *cmd: str, timeout: float = 120) -> str:
        out = subprocess.run(
            [*self._as, *cmd], capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
        return out.stdout

    def start(self) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            shutil.chown(pwfile, "nobody")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        pwfile.unlink()
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server on its data directory (after :meth:`start` made it, or a pause)."""
        options = (
            f"-c listen_addresses={self.host} -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c max_connections=300 "
            f"-c shared_buffers=64MB -c log_min_messages=warning"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def pause(self) -> None:
        """Stop the server (fast shutdown: sessions are cut), keeping its data for resume()."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "stop",
        )

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        """``postgresql://lrctl[:PASSWORD]@127.0.0.1:PORT/DATABASE``."""
        auth = f"{USER}:{PASSWORD}" if password else USER
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` through the Unix socket as the superuser (trust) and return its output."""
        return self._run(
            str(self.bindir / "psql"),
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            USER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
        )

    def create_database(self) -> str:
        """Create an empty database and return its name."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return name

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                    timeout=60,
                )
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_server: PostgresServer | None = None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (started on first use).

    Import this fixture into a test module (``from tests.pg import postgres``); every module
    that does shares the same server, stopped when the interpreter exits.
    """
    global _server
    if _server is None:
        _server = PostgresServer().start()
        atexit.register(_server.stop)
    yield _server


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The URL (with password) of a fresh, empty database."""
    return postgres.url(postgres.create_database())
