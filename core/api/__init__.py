"""The API edge shared by the partner API (/v1/partner/*) and the native trader API (/v1/*):
key format, hashing and cache (keys), the rate limiter (ratelimit), Idempotency-Key handling
(idempotency), the base view and its headers (views), wire fields (fields), the fast JSON
response (responses) and OpenAPI pieces (schema). It imports no app: what it needs from one
(the idempotency record model, the trader key check) is named in settings, as Django's
AUTH_USER_MODEL is."""
