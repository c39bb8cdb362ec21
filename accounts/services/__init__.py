"""Trader-side business operations, one submodule per concern. Views, tasks, the partner API
and admin actions import from here; nothing else writes accounts' models."""

from accounts.services.login import (
    login_link_request,
    login_link_url,
    login_redirect_resolve,
    login_redirect_validate,
    login_token_consume,
    login_token_consume_hash,
    login_token_get_pending,
    login_token_hash,
    normalize_origin,
)
from accounts.services.trader_keys import (
    trader_key_authenticate,
    trader_key_create,
    trader_key_revoke,
)

__all__ = [
    "login_link_request",
    "login_link_url",
    "login_redirect_resolve",
    "login_redirect_validate",
    "login_token_consume",
    "login_token_consume_hash",
    "login_token_get_pending",
    "login_token_hash",
    "normalize_origin",
    "trader_key_authenticate",
    "trader_key_create",
    "trader_key_revoke",
]
