"""polysim settings, read from the environment (12-factor).

Every variable is documented in deploy/.env.example. With `DATABASE_URL` / `REDIS_URL` unset
the project starts the checkout's embedded PostgreSQL / Redis (config/embedded.py, real servers
from pip packages under var/) and uses them exactly as production uses its own: one code path
in every mode (docs/operations.md, "Embedded servers").
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
if (BASE_DIR / ".env").is_file():  # local convenience only; never committed
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
# POLYSIM_EMBEDDED=1 (the default) lets an unset DATABASE_URL / REDIS_URL start the checkout's
# embedded server; production sets 0, so a missing URL stops the process instead of quietly
# running a private PostgreSQL inside a container. EMBEDDED: the data lives in the embedded
# PostgreSQL under var/ (a development checkout); only then (or with DEBUG) may the built-in
# development SECRET_KEY stand in for a real one.
_UNSET_URLS = [name for name in ("DATABASE_URL", "REDIS_URL") if not env.str(name, default="")]
if _UNSET_URLS and not env.bool("POLYSIM_EMBEDDED", default=True):
    raise ImproperlyConfigured(f"{' and '.join(_UNSET_URLS)} must be set when POLYSIM_EMBEDDED=0")
EMBEDDED = "DATABASE_URL" in _UNSET_URLS
_EMBEDDED_URLS: dict[str, str] = {}
if _UNSET_URLS:
    from config import embedded

    _EMBEDDED_URLS = embedded.ensure(
        postgres="DATABASE_URL" in _UNSET_URLS, redis="REDIS_URL" in _UNSET_URLS
    )
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG and not EMBEDDED:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG=0")
    SECRET_KEY = "polysim-insecure-embedded-key-never-use-in-production"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "core",
    "marketdata",
    "accounts",
    "trading",
    "partners",
    "web",
    # `manage.py demo` and `manage.py fakepoly`; no production app imports it.
    "devtools",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "core.middleware.InputGuardMiddleware",  # NUL in a path or query string: never a 500
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files in every mode, no extra server
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.ApiErrorMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out sign-in into its 429 page
]

# --- Admin sign-in throttling (django-axes) ----------------------------------------------------
# Only the admin signs in with a password (traders use one-time links, partners API keys).
# AXES_FAILURE_LIMIT wrong passwords from one IP (whatever the username), or for one username
# (whatever the IP), lock that IP or username out until an operator lifts it (admin → Axes →
# Access attempts, or `manage.py axes_reset_username <name>` / `axes_reset_ip <ip>`), or for
# AXES_COOLOFF_MINUTES. A right password resets the count (not a lock-out).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=60))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
# The admin's form posts the email as `username` (axes would read USERNAME_FIELD, "email",
# find nothing, and count every failure against one empty username: a global lock-out).
AXES_USERNAME_FORM_FIELD = "username"
AXES_CLIENT_IP_CALLABLE = "accounts.views.client_ip_address"  # CLIENT_IP_PROXY_COUNT applies
AXES_VERBOSE = False
AXES_ONLY_ADMIN_SITE = True
AXES_DISABLE_ACCESS_LOG = True  # failures are kept; successful sign-ins are not logged here

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="") or _EMBEDDED_URLS["DATABASE_URL"]
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
_db = DATABASES["default"]
if _db["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must be a PostgreSQL URL (postgres://...)")
# Django's, with a health check that skips its SELECT 1 round trip while the connection's
# socket shows the server has not closed it (core/dbbackends).
_db["ENGINE"] = "core.dbbackends.postgresql"
if not _db["HOST"] and "host" in _db.get("OPTIONS", {}):  # a Unix socket dir, as embedded uses
    _db["HOST"] = _db["OPTIONS"].pop("host")
_db["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
_db["CONN_HEALTH_CHECKS"] = True
_db.setdefault("OPTIONS", {}).setdefault(
    "connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5)
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"


# --- Redis, Celery ------------------------------------------------------------------------
def redis_url_with_db(url: str, db: int) -> str:
    """`url` pointing at database number `db` (redis:// and rediss:// in the path, unix:// in
    the query, as redis-py reads them)."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "db"]
    if parts.scheme == "unix":  # urlunsplit would drop the empty authority: unix:/path
        return f"unix://{parts.netloc}{parts.path}?{urlencode([*query, ('db', str(db))])}"
    return urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))


def celery_broker_url_for(redis_url: str) -> str:
    """Kombu's spelling of a Redis URL: a Unix socket is `redis+socket://<path>?virtual_host=N`
    (kombu does not read redis-py's `unix://...?db=N`); TCP URLs are the same in both."""
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    db = dict(parse_qsl(parts.query)).get("db", "0")
    return f"redis+socket://{parts.path}?virtual_host={db}"


REDIS_URL = env.str("REDIS_URL", default="") or _EMBEDDED_URLS["REDIS_URL"]
# Celery always goes through a broker (a real worker runs the tasks, in the demo too); by
# default the same Redis.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or celery_broker_url_for(REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BEAT_SCHEDULE = {
    "outbox-sweep": {"task": "accounts.tasks.outbox_sweep", "schedule": 60.0},
    "idempotency-purge": {"task": "partners.tasks.idempotency_purge", "schedule": 3600.0},
    "marketdata-discover": {"task": "marketdata.tasks.discover_markets", "schedule": 600.0},
    "marketdata-check-held": {"task": "marketdata.tasks.check_held_markets", "schedule": 30.0},
    "orders-expire": {"task": "trading.tasks.orders_expire", "schedule": 15.0},
    "orders-cancel-halted": {"task": "trading.tasks.orders_cancel_halted", "schedule": 15.0},
    "settle-pending": {"task": "trading.tasks.settle_pending", "schedule": 30.0},
    "equity-snapshots": {"task": "trading.tasks.equity_snapshots", "schedule": 60.0},
}

# --- Email --------------------------------------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(VAR_DIR / "mail"))
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="polysim <no-reply@localhost>")

# --- Auth, sessions, security ---------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LOGIN_URL = "/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if not DEBUG and PUBLIC_BASE_URL.startswith("https://"):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024  # partner bodies are small; metadata ≤ 16 KB

# --- I18n, static ---------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(VAR_DIR / "static"))
# WhiteNoise serves static files in every mode (no separate static server needed); with
# finders on, `make demo` works without a collectstatic step.
WHITENOISE_USE_FINDERS = True
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)

# --- DRF, OpenAPI -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.StrictJsonParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_THROTTLE_CLASSES": [],
    "EXCEPTION_HANDLER": "core.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "COERCE_DECIMAL_TO_STRING": True,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "polysim Partner API",
    "DESCRIPTION": (
        "Server-to-server API for prop firms: register traders, send login links, provision "
        "simulated accounts on live Polymarket prices and read what a rule engine needs. "
        'Every error is `{"error": CODE, "message": ..., "details"?: {...}}`; the code is '
        "echoed in `X-Error-Code`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/v1/partner",
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "BearerAuth": {"type": "http", "scheme": "bearer", "description": "The raw API key"},
        }
    },
    "SECURITY": [{"ApiKeyAuth": []}, {"BearerAuth": []}],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "partners.schema.postprocess",
    ],
}

# --- polysim --------------------------------------------------------------------------------
LOGIN_LINK_TTL_SECONDS = env.int("LOGIN_LINK_TTL_SECONDS", default=15 * 60)
LOGIN_LINKS_PER_HOUR = env.int("LOGIN_LINKS_PER_HOUR", default=5)
# Retail sign-in (/login/): links a single client IP may request per hour (any emails), and
# how many reverse proxies append to X-Forwarded-For in front of the app (0: use the socket
# peer address; the client is then the Nth entry from the right).
LOGIN_REQUESTS_PER_IP_PER_HOUR = env.int("LOGIN_REQUESTS_PER_IP_PER_HOUR", default=20)
CLIENT_IP_PROXY_COUNT = env.int("CLIENT_IP_PROXY_COUNT", default=0)
# Starting balance (USDC) of the personal account a retail trader gets at first sign-in.
try:
    PERSONAL_ACCOUNT_DEFAULT_BALANCE = Decimal(
        env.str("PERSONAL_ACCOUNT_DEFAULT_BALANCE", default="1000")
    )
except InvalidOperation as exc:
    raise ImproperlyConfigured("PERSONAL_ACCOUNT_DEFAULT_BALANCE must be a decimal") from exc
if not PERSONAL_ACCOUNT_DEFAULT_BALANCE.is_finite() or PERSONAL_ACCOUNT_DEFAULT_BALANCE <= 0:
    raise ImproperlyConfigured("PERSONAL_ACCOUNT_DEFAULT_BALANCE must be > 0")
IDEMPOTENCY_TTL_HOURS = env.int("IDEMPOTENCY_TTL_HOURS", default=48)
RATE_LIMIT_DEFAULT_PER_SECOND = env.int("RATE_LIMIT_DEFAULT_PER_SECOND", default=50)
RATE_LIMIT_DEFAULT_PER_MINUTE = env.int("RATE_LIMIT_DEFAULT_PER_MINUTE", default=3000)
# Wiring, not configuration: the API edge (core.api) imports no app, so what it needs from one
# is named here, as AUTH_USER_MODEL names the user model.
IDEMPOTENCY_RECORD_MODEL = "partners.IdempotencyRecord"
TRADER_KEY_AUTHENTICATE = "accounts.services.trader_keys.trader_key_authenticate"
# How long an API key lookup may be cached in one process. Revocation must take effect within
# 5 s everywhere (docs/partner-api.md), so this must stay below that.
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=2.0)
if API_KEY_CACHE_SECONDS >= 5:
    raise ImproperlyConfigured("API_KEY_CACHE_SECONDS must be < 5 (revocation promise)")

# --- Polymarket (market data) -----------------------------------------------------------------
# Point all three at `manage.py fakepoly` to run offline.
POLYMARKET_GAMMA_URL = env.str("POLYMARKET_GAMMA_URL", default="https://gamma-api.polymarket.com")
POLYMARKET_CLOB_URL = env.str("POLYMARKET_CLOB_URL", default="https://clob.polymarket.com")
POLYMARKET_WS_URL = env.str(
    "POLYMARKET_WS_URL", default="wss://ws-subscriptions-clob.polymarket.com/ws/market"
)
# The ingester (manage.py marketdata stream): text PING interval, how long a socket may stay
# silent (no frame, not even a PONG) before it is declared dead and its books stale, tokens
# per websocket connection, how many of the most active open markets to stream besides held
# tokens. PING 2 s + dead 5 s bound a silent socket's tops to ~5 s fresh (docs/operations.md).
MARKETDATA_WS_PING_SECONDS = env.float("MARKETDATA_WS_PING_SECONDS", default=2.0)
MARKETDATA_WS_DEAD_SECONDS = env.float("MARKETDATA_WS_DEAD_SECONDS", default=5.0)
MARKETDATA_WS_MAX_TOKENS = env.int("MARKETDATA_WS_MAX_TOKENS", default=400)
MARKETDATA_TOP_MARKETS = env.int("MARKETDATA_TOP_MARKETS", default=50)
# Conflation: the feed publishes each token's latest top at most once per this many ms (0 =
# after every frame); and checks each token's book hash at most once per MARKETDATA_HASH_CHECK_MS.
MARKETDATA_FLUSH_MS = env.int("MARKETDATA_FLUSH_MS", default=5)
MARKETDATA_HASH_CHECK_MS = env.int("MARKETDATA_HASH_CHECK_MS", default=1000)
# Functions returning token ids the feed must stream (the trading app's live orders and
# positions); a setting, so that marketdata imports nothing of ours.
MARKETDATA_TOKEN_SOURCES = ["trading.selectors.feed_tokens_wanted"]
# Streams of book updates on the price bus (md:updates:<i>); feed and matchers must agree.
PRICE_BUS_SHARDS = env.int("PRICE_BUS_SHARDS", default=1)
# A top is live only while its shard's feed heartbeat (md:heartbeat:<i>, beaten every 500 ms
# while the feed is healthy) is younger than this; older, its books take no taker orders
# (STALE_BOOK) even if `fresh`.
PRICE_BUS_HEARTBEAT_STALE_SECONDS = env.float("PRICE_BUS_HEARTBEAT_STALE_SECONDS", default=2.0)
# The maker matcher (`manage.py trading match`): how often it re-reads the orders changed
# since its last pass (catching up on lost order events and other processes' fills), and how
# long a bus entry may sit unacknowledged on a dead matcher before another claims it.
MATCHER_RECONCILE_SECONDS = env.float("MATCHER_RECONCILE_SECONDS", default=5.0)
MATCHER_CLAIM_IDLE_SECONDS = env.float("MATCHER_CLAIM_IDLE_SECONDS", default=30.0)
# Worker threads (each with its own DB connection) that run one bus batch's fills in parallel,
# one token's fills in sequence; 1 = everything on the matcher's own thread.
MATCHER_WORKERS = env.int("MATCHER_WORKERS", default=4)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # No secret in any line (login-link tokens, API keys): core/redact.py.
    "filters": {"redact": {"()": "core.redact.RedactSecrets"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
