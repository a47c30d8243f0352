"""The real PostgreSQL of the archive tests: a database of each test's own, dropped after it.

ES_TEST_POSTGRES_URL names the server's maintenance database (default: postgres@127.0.0.1:5432);
when it cannot be reached the tests are skipped, unless ES_REQUIRE_POSTGRES=1 (CI sets it):
then they fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

POSTGRES_URL = os.environ.get(
    "ES_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("ES_REQUIRE_POSTGRES") == "1"


def _maintenance() -> psycopg.Connection:
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        if REQUIRE_POSTGRES:
            pytest.fail(f"ES_REQUIRE_POSTGRES=1 but PostgreSQL at {POSTGRES_URL} is "
                        f"unreachable: {error}")
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL} ({error}); set ES_REQUIRE_POSTGRES=1 "
                    "to fail instead")


@pytest.fixture
def archive_url() -> Iterator[str]:
    """The URL of a database of this test's own (`es_archive_test_<pid>_<random>`)."""
    name = f"es_archive_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _maintenance() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(POSTGRES_URL)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with _maintenance() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


class Proxy:
    """A TCP proxy to PostgreSQL that a test can cut: `close()` drops every connection and
    refuses new ones, as a PostgreSQL gone away would (the machine's own server is shared,
    so it is never stopped)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.sockets: list[socket.socket] = []
        self.reopen()

    def reopen(self) -> None:
        """Accepts connections again, on the same port (PostgreSQL is back)."""
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.closed:
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self.sockets += (client, upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):  # wakes the accepting thread: a bare close()
            self.listener.shutdown(socket.SHUT_RDWR)  # leaves the socket listening
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
