"""core.dbbackends.postgresql: the per-request health check skips its SELECT 1 while the
connection's socket shows the server has not closed it, and still replaces a connection
the server has ended."""

from __future__ import annotations

import select
import time

import psycopg
import pytest
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def db():
    return connections[DEFAULT_DB_ALIAS]


@pytest.fixture
def checks(monkeypatch, db):
    """Count the SELECT 1 checks (Django's is_usable) while health checks are on."""
    calls = []
    real = type(db).is_usable

    def counted(self):
        calls.append(self)
        return real(self)

    monkeypatch.setattr(type(db), "is_usable", counted)
    monkeypatch.setattr(db, "health_check_enabled", True)
    return calls


def _backend_pid(db) -> int:
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _new_request(db) -> None:
    db.health_check_done = False  # what close_if_unusable_or_obsolete does
    db.close_if_health_check_failed()


def test_settings_select_this_backend_on_postgresql(db):
    assert settings.DATABASES["default"]["ENGINE"] == "core.dbbackends.postgresql"
    assert type(db).__module__ == "core.dbbackends.postgresql.base"


def test_an_open_idle_connection_is_reused_without_select_1(db, checks):
    pid = _backend_pid(db)
    raw = db.connection
    _new_request(db)
    assert checks == []
    assert db.connection is raw
    assert _backend_pid(db) == pid


def test_a_connection_the_server_ended_is_checked_and_replaced(db, checks):
    pid = _backend_pid(db)
    dsn = db.connection.info.dsn
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    socket = db.connection.pgconn.socket
    while not select.select([socket], [], [], 0.05)[0] and time.monotonic() < deadline:
        pass
    _new_request(db)
    assert len(checks) == 1  # the socket had something to say: Django's SELECT 1 decided
    assert _backend_pid(db) != pid  # and the request got a new connection
