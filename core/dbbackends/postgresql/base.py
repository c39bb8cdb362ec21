"""Django's PostgreSQL backend with a health check that costs no round trip when the
connection is plainly alive.

Django's CONN_HEALTH_CHECKS sends `SELECT 1` before the first query of every request that
reuses a persistent connection: one round trip per request. Between requests an idle
connection has nothing in flight, so the server only writes to it to end it (the FATAL
notice of a shutdown or a terminated backend, then the socket's end of file): a socket
with nothing to read is a connection the server has not closed. Only then is the check
skipped; anything to read, or a connection psycopg already knows is broken, gets Django's
`SELECT 1` (which closes it if it fails, and the request reconnects). A server that
vanished without closing the socket (host or network gone) is not detected, by `SELECT 1`
either: that statement would wait as the request's own first query does.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        state: Any = self  # Django's attributes that its stubs do not declare
        if (
            self.connection is not None
            and state.health_check_enabled
            and not state.health_check_done
            and not state.pool
            and _idle_and_open(self.connection)
        ):
            state.health_check_done = True
            return
        super().close_if_health_check_failed()


def _idle_and_open(connection: Any) -> bool:
    """Whether psycopg sees the connection idle and usable and its socket has nothing to
    read (no message, no end of file) right now."""
    if connection.closed or connection.broken:
        return False
    pgconn = connection.pgconn
    if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return False
    try:
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN)
        return not poller.poll(0)
    except (OSError, psycopg.Error):
        return False
