"""The native trader API, /v1/*, trading's part: your accounts and their trades
(trading.apis.accounts) and orders (trading.apis.orders); market reads are marketdata.apis.
Every view derives from core.api.views.TraderApiView: a personal trader key or the signed-in
session, the per-user rate limit, Idempotency-Key on POST and DELETE. A trader only ever
reaches their own accounts (trading.permissions): another user's account is the same
NOT_FOUND as a missing one. Views only translate HTTP ↔ selectors and services; they never
build error bodies. The OpenAPI document covering both parts is trading.apis.openapi."""
