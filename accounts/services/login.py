"""Login links: validate where a link may land, issue it (throttled, through the email outbox)
and consume it exactly once.

Secrecy model: a LoginToken row stores only a random salt and SHA-256 of the raw token. The raw
token is recomputed when the email is rendered as HMAC(SECRET_KEY-derived key, "id:salt"), so
neither the token table, the outbox, the task queue nor a session ever holds a usable link. A
database dump alone cannot sign anyone in; rotating SECRET_KEY voids every outstanding link,
which is acceptable for links that live 15 minutes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import math
import secrets
import time
import unicodedata
from functools import partial
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.models import EmailOutbox, LoginToken, User
from accounts.services.wallets import user_ensure
from core import errors

logger = logging.getLogger("polysim.login")

LOGIN_LINK_KEY_LABEL = "polysim-login-link"
LOGIN_LINK_EMAIL_KIND = "login_link"
EMAIL_OUTBOX_SEND_TASK = "accounts.tasks.email_outbox_send"
THROTTLE_WINDOW = dt.timedelta(hours=1)
# Where a trader lands when neither the partner nor the tenant says otherwise.
FALLBACK_LANDING_URL = "/app/"
# Where a retail (no firm) sign-in lands.
RETAIL_LANDING_URL = "/portfolio/"
# LoginToken.redirect_url's column width; a longer URL could not be stored anyway.
MAX_REDIRECT_LENGTH = 2048
# The raw token is 43 url-safe characters; anything much longer is not ours and is not hashed.
MAX_RAW_TOKEN_LENGTH = 128
_LOCAL_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "::1"})  # urlsplit().hostname form


class LandingPolicy(Protocol):
    """What a sign-in needs of the firm it is for (partners.Tenant): where its traders may land.
    A protocol, because accounts sits below partners and imports nothing of it."""

    redirect_allowlist: Any
    default_landing_url: str


# --- Redirect targets ---------------------------------------------------------------------
def normalize_origin(origin: str) -> str:
    """'HTTPS://Firm.Example/' → 'https://firm.example'. Raises ValidationFailed for anything
    that is not a bare http(s) origin; plain http only for localhost."""
    parts = urlsplit(origin.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    bad = (
        scheme not in ("http", "https")
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    )
    if not bad and scheme == "http" and host not in ("localhost", "127.0.0.1", "[::1]", "::1"):
        bad = True
    if bad:
        raise errors.ValidationFailed(
            "an allowlisted origin is scheme://host[:port]; https unless localhost",
            details={"origin": [origin]},
        )
    # An explicit default port names the same origin: "https://a.example:443" == "https://a.example".
    port = (
        f":{parts.port}" if parts.port and parts.port != {"https": 443, "http": 80}[scheme] else ""
    )
    host_text = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host_text}{port}"


def _allowlisted_origins(tenant: LandingPolicy | None) -> set[str]:
    origins: set[str] = set()
    for entry in (tenant.redirect_allowlist or []) if tenant is not None else []:
        try:
            origins.add(normalize_origin(str(entry)))
        except (errors.ValidationFailed, ValueError):
            continue  # a hand-edited bad entry must not widen or break the allowlist
    return origins


def _has_unsafe_characters(url: str) -> bool:
    # Browsers silently drop tabs/newlines inside URLs and treat "\" as "/", which turns
    # "/\t/evil.com" or "/\evil.com" into "//evil.com"; refuse them all rather than reason
    # about each browser's normalisation.
    return any(ch == "\\" or ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in url)


def _is_safe_own_path(url: str) -> bool:
    """A path on our own UI: exactly one leading "/" and nothing a browser could read as
    another host."""
    return (
        url.startswith("/")
        and not url.startswith("//")
        and url_has_allowed_host_and_scheme(url, allowed_hosts=set(), require_https=True)
    )


def _allowlisted_absolute(url: str, tenant: LandingPolicy | None) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed or out-of-range port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.username is not None or parts.password is not None:
        return False  # "https://firm.example@evil.com" reads as firm.example to a human
    try:
        origin = normalize_origin(f"{scheme}://{parts.netloc}")
    except (errors.ValidationFailed, ValueError):
        return False  # includes plain http to anything but localhost
    if origin not in _allowlisted_origins(tenant):
        return False
    is_local = parts.hostname.lower() in _LOCAL_HOSTNAMES
    # Our own origin check above decides the host (case-insensitively, ports canonicalised);
    # Django's check is the second opinion on scheme and on parser quirks that could make a
    # browser see a different host than urlsplit did.
    return url_has_allowed_host_and_scheme(
        url, allowed_hosts={parts.netloc}, require_https=not is_local
    )


def _is_acceptable(url: str, tenant: LandingPolicy | None) -> bool:
    if len(url) > MAX_REDIRECT_LENGTH or _has_unsafe_characters(url):
        return False
    if url.startswith("/"):
        return _is_safe_own_path(url)
    return _allowlisted_absolute(url, tenant)


def login_redirect_validate(*, tenant: LandingPolicy | None, redirect_url: str | None) -> str:
    """Return the URL a login link should land on.

    None or blank → the tenant's default landing page ("/app/" without a tenant). Otherwise
    either a path on our own UI (one leading "/") or an absolute http(s) URL whose origin is
    on the tenant's redirect_allowlist, https unless the host is localhost/127.0.0.1/[::1].
    Raises RedirectNotAllowed (422) for anything else. Pure function: no writes, no locks.
    """
    if redirect_url is None or not redirect_url.strip():
        if tenant is not None and tenant.default_landing_url:
            return tenant.default_landing_url
        return FALLBACK_LANDING_URL
    if _is_acceptable(redirect_url, tenant):
        return redirect_url
    raise errors.RedirectNotAllowed(
        "redirect_url must be a path on the trader UI or an https URL on this tenant's "
        "redirect allowlist.",
        details={"redirect_url": ["not allowed"]},
    )


def login_redirect_resolve(*, token: LoginToken) -> str:
    """Where to send a trader who just consumed `token`: its stored redirect_url re-checked
    against the tenant's current allowlist (an origin removed since issue no longer
    qualifies), else the tenant's default landing page if that passes, else "/app/"."""
    tenant = token.tenant
    default = tenant.default_landing_url if tenant is not None else ""
    for candidate in (token.redirect_url, default):
        if candidate and _is_acceptable(candidate, tenant):
            return candidate
    return FALLBACK_LANDING_URL


# --- Token material -----------------------------------------------------------------------
def login_token_hash(raw_token: str) -> str:
    """SHA-256 hex of a raw token: the only form that is ever stored or kept in a session."""
    return hashlib.sha256(raw_token.encode()).hexdigest()


def _raw_token(token: LoginToken) -> str:
    # salted_hmac derives its key from SECRET_KEY and the label, so this key is useless for
    # anything but login links (and other HMACs of SECRET_KEY cannot forge a link).
    digest = salted_hmac(
        LOGIN_LINK_KEY_LABEL, f"{token.pk}:{token.salt}", algorithm="sha256"
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def login_link_url(*, token: LoginToken) -> str:
    """The emailed link for `token`. Recomputed on demand; never store or log the result."""
    return f"{settings.PUBLIC_BASE_URL}/login/t/{_raw_token(token)}"


# --- Issue --------------------------------------------------------------------------------
def _enqueue_outbox_send(outbox_id: int) -> None:
    """After commit: hand the email to the worker. A broker outage must not turn an accepted
    request into an error (nor a partner's retry into a second link): the row is committed,
    the outbox sweep sends it. Caught here rather than with on_commit(robust=True), whose
    error logging itself raises on a functools.partial in Django 5.2 (the request got a 500).
    The task is looked up by name in the Celery app: accounts.tasks calls this module, so an
    import here would make the two a cycle."""
    try:
        current_app.tasks[EMAIL_OUTBOX_SEND_TASK].delay(outbox_id)
    except Exception:
        logger.exception("email outbox %s: could not enqueue; the sweep will send it", outbox_id)


def login_link_request(*, user: User, tenant: Any, redirect_url: str | None) -> LoginToken:
    """Issue a login link for `user` on behalf of `tenant` and queue its email.

    Validates redirect_url first (RedirectNotAllowed, nothing written). Then, in one
    transaction holding the user row lock (SELECT ... FOR UPDATE, so concurrent requests for
    the same user are serialised and the count below is exact): if LOGIN_LINKS_PER_HOUR
    tokens for (user, tenant) were created in the last hour, raises LoginLinkThrottled with
    Retry-After (seconds until the oldest counted token leaves the window). Otherwise writes
    the LoginToken and an EmailOutbox row; the send task is enqueued on commit and the outbox
    sweeper re-enqueues it if that enqueue is lost.

    Not idempotent: every successful call issues a new link and counts against the throttle.
    Older unused links stay valid until they expire.
    """
    destination = login_redirect_validate(tenant=tenant, redirect_url=redirect_url)
    limit = int(settings.LOGIN_LINKS_PER_HOUR)
    with transaction.atomic():
        User.objects.select_for_update().only("pk").get(pk=user.pk)
        now = timezone.now()
        recent = list(
            LoginToken.objects.filter(
                user=user, tenant=tenant, created_at__gt=now - THROTTLE_WINDOW
            )
            .order_by("created_at")
            .values_list("created_at", flat=True)
        )
        if len(recent) >= limit:
            # The next slot opens when enough of the oldest have aged out to leave limit - 1.
            frees_at = (
                recent[len(recent) - limit] + THROTTLE_WINDOW
                if limit > 0
                else now + THROTTLE_WINDOW  # links switched off by configuration
            )
            retry_after = max(1, math.ceil((frees_at - now).total_seconds()))
            raise errors.LoginLinkThrottled(
                details={"limit": limit, "window_seconds": int(THROTTLE_WINDOW.total_seconds())},
                headers={"Retry-After": str(retry_after)},
            )
        token = LoginToken.objects.create(
            user=user,
            tenant=tenant,
            salt=secrets.token_hex(16),
            # The real hash needs the row id; until then a random value nobody holds a
            # preimage for keeps the unique column filled without being consumable.
            token_hash=secrets.token_hex(32),
            redirect_url=destination,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=int(settings.LOGIN_LINK_TTL_SECONDS)),
        )
        token.token_hash = login_token_hash(_raw_token(token))
        token.save(update_fields=["token_hash"])
        outbox = EmailOutbox.objects.create(
            kind=LOGIN_LINK_EMAIL_KIND,
            to_email=user.email,
            payload={"login_token_id": token.pk},
        )
        transaction.on_commit(partial(_enqueue_outbox_send, outbox.pk))
    return token


# --- Consume ------------------------------------------------------------------------------
def login_token_get_pending(*, token_hash: str) -> LoginToken | None:
    """The unused, unexpired token of an active user with this hash (user and tenant joined),
    or None. A read for the confirmation page: consumes nothing, locks nothing."""
    return (
        LoginToken.objects.select_related("user", "tenant")
        .filter(
            token_hash=token_hash,
            used_at__isnull=True,
            expires_at__gt=timezone.now(),
            user__is_active=True,
        )
        .first()
    )


def login_token_consume_hash(*, token_hash: str) -> LoginToken | None:
    """Mark the token with this hash used and return it (user and tenant joined), or None if
    it is unknown, expired or already used, or its user is inactive.

    Exactly once under concurrency: one conditional UPDATE (used_at IS NULL AND not expired)
    on a single row; the database's row lock makes every concurrent caller but one see the
    row already used and change nothing. Not idempotent by design: a second call returns None.
    """
    now = timezone.now()
    with transaction.atomic():
        changed = LoginToken.objects.filter(
            token_hash=token_hash, used_at__isnull=True, expires_at__gt=now
        ).update(used_at=now)
        if changed != 1:
            return None
        token = LoginToken.objects.select_related("user", "tenant").get(token_hash=token_hash)
    # Checked after the UPDATE (not in its WHERE) so the UPDATE stays a single-table statement
    # whose condition Postgres re-checks on the locked row; the token is burned either way.
    if not token.user.is_active:
        return None
    return token


def login_token_consume(*, raw_token: str) -> LoginToken | None:
    """login_token_consume_hash() for a raw token from a link. Same locking and guarantees."""
    if not raw_token or len(raw_token) > MAX_RAW_TOKEN_LENGTH:
        return None
    return login_token_consume_hash(token_hash=login_token_hash(raw_token))


# --- Retail sign-in -------------------------------------------------------------------------
IP_WINDOW_S = 3600
_REDIS_TIMEOUT_S = 0.2


_redis_clients: dict[str, redis.Redis] = {}


def _redis_client(url: str) -> redis.Redis:
    client = _redis_clients.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=_REDIS_TIMEOUT_S, socket_timeout=_REDIS_TIMEOUT_S
        )
        _redis_clients[url] = client
    return client


def login_ip_throttle_hit(*, client_ip: str) -> int | None:
    """Count one sign-in link request from `client_ip` in the current clock hour; return the
    seconds until that hour ends when the count is over LOGIN_REQUESTS_PER_IP_PER_HOUR, else
    None.

    A fixed window (one INCR, atomic in Redis, shared by every web process): at a window edge
    a client can get up to twice the limit within an hour, which is acceptable for an abuse
    cap whose real guard is the per-email throttle. Counts denied requests too, so hammering
    the form does not help. Fails open (logs a warning) when Redis is unreachable: sign-in
    must not depend on the limiter's store."""
    limit = int(settings.LOGIN_REQUESTS_PER_IP_PER_HOUR)
    now = time.time()
    window = int(now // IP_WINDOW_S)
    retry_after = max(1, math.ceil((window + 1) * IP_WINDOW_S - now))
    key = f"login:ip:{client_ip}:{window}"
    try:
        pipe = _redis_client(str(settings.REDIS_URL)).pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, IP_WINDOW_S + 60)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:
        logger.warning("login IP throttle store unreachable, failing open: %s", exc)
        return None
    return retry_after if count > limit else None


def login_link_request_retail(*, email: str, client_ip: str) -> None:
    """A visitor asks for a sign-in link on /login/ (no firm involved).

    Counts the request against the client IP first (RateLimitExceeded with Retry-After when
    over LOGIN_REQUESTS_PER_IP_PER_HOUR; nothing written). Then the user of this email is
    found or created and a personal link (landing on the portfolio) is issued through
    login_link_request, with its per-email throttle (LoginLinkThrottled) and outbox.

    No enumeration: a known and an unknown email run the same statements (user_ensure is
    one INSERT … ON CONFLICT DO NOTHING plus one read either way) and both send an email, so
    the answer and its timing do not depend on whether the address was known. The personal
    account is opened when the link is first confirmed (personal_account_ensure), not here:
    an address nobody has proven to own gets no wallet and no leaderboard row.
    Not idempotent: each call issues a new link."""
    retry_after = login_ip_throttle_hit(client_ip=client_ip)
    if retry_after is not None:
        raise errors.RateLimitExceeded(
            "Too many sign-in requests from this network.",
            headers={"Retry-After": str(retry_after)},
        )
    user = user_ensure(email=email)
    login_link_request(user=user, tenant=None, redirect_url=RETAIL_LANDING_URL)
