"""gunicorn settings for the web process (WSGI). Workers scale with cores; the partner API is
I/O-bound on Postgres/Redis, so a few threads per worker help."""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", 2))
timeout = 30
graceful_timeout = 30  # SIGTERM: finish in-flight requests before exiting
keepalive = 5
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = "-"
errorlog = "-"
# Login-link tokens and API keys never reach the access or error log (core/redact.py).
logger_class = "core.redact.RedactingGunicornLogger"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
