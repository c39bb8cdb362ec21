"""Tasks go through a real Celery worker process (as in the demo and production; the suite
runs them eagerly unless a test opts in here): the login-link email is queued on commit,
picked up from Redis by `celery worker`, sent through the configured email backend and its
outbox row marked sent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import pools as kombu_pools

from accounts.models import EmailOutbox
from tests.factories import TenantFactory, make_partner_client
from tests.runtime import child_env

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def real_broker(settings, redis_url):
    """This process's Celery app publishing to its Redis broker (no eager execution) for one
    test."""
    from config.celery import app

    def drop_cached_pools():
        # Celery caches its connection and producer pools on first use, bound to the
        # configuration of that moment; each configuration needs its own.
        # kombu keeps them in process-wide registries keyed by connection: closing one without
        # clearing the registry leaves a closed pool that every later task call (eager ones
        # too: Celery acquires a producer even then) fails on with "Acquire on closed pool".
        kombu_pools.reset()
        app._pool = None
        app.amqp._producer_pool = None

    saved = app.conf.task_always_eager
    drop_cached_pools()
    app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    yield app.conf.broker_url
    drop_cached_pools()
    app.conf.task_always_eager = saved


def test_login_link_email_is_sent_by_a_real_worker(settings, real_broker, tmp_path):
    mail_dir = tmp_path / "mail"
    env = child_env(
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail_dir),
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
         "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        client = make_partner_client(TenantFactory(slug="acme"))
        user_id = client.post(
            "/v1/partner/users", {"external_id": "w", "email": "worker@example.com"}, format="json"
        ).json()["user_id"]
        response = client.post(f"/v1/partner/users/{user_id}/login-link")
        assert response.status_code == 202
        outbox = EmailOutbox.objects.get()
        deadline = time.monotonic() + 60
        while True:
            outbox.refresh_from_db()
            if outbox.status == EmailOutbox.Status.SENT:
                break
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"worker did not send: {outbox.status}"
            time.sleep(0.2)
        [message] = list(mail_dir.iterdir())
        text = message.read_text()
        assert "To: worker@example.com" in text
        assert "/login/t/" in text
        assert outbox.attempts == 1
    finally:
        worker.terminate()
        worker.wait(20)
