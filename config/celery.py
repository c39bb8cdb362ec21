"""The Celery app. Its broker is always Redis (CELERY_BROKER_URL, by default REDIS_URL: the
embedded redis-server when no URL is set), and a `celery worker` runs the tasks in every mode;
only the test suite runs them eagerly unless a test asks for a real worker."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("polysim")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
