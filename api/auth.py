"""JWT authentication (flask-jwt-extended): raw or ``Bearer`` tokens, HS256, a deny list.

Tokens are issued by the operator (``cxr token issue``), never by an endpoint. A token
is sent raw, as the LeapAI API does (``Authorization: eyJ...``), or as
``Bearer eyJ...``. Revoking puts the token's ``jti`` under ``cxr:jwt:revoked:<jti>`` in
Redis; every request checks that key. The 401 messages are the contract's:
``Token missing``, ``Token expired``, ``Invalid token`` (malformed, bad signature,
wrong or ``none`` algorithm, not yet valid, revoked, without ``jti`` or ``exp``).
Repeated 401s from one address are rate-limited (``api.ratelimit``).

Who may read what: a bulk job records the subject (``sub``) of the token that sent it,
and ``GET /jobs/<id>`` shows it to that subject only; a token issued with
``cxr token issue --admin`` carries ``"admin": true`` and reads every job. Anyone else
gets the same 404 as for an unknown id, so a job id found elsewhere (a log, a summary
file name) tells a client nothing, not even that the job exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt as pyjwt
import redis
from flask import Flask, request
from flask_jwt_extended import JWTManager, create_access_token, get_jwt

from api.envelope import envelope

REVOKED_KEY = "cxr:jwt:revoked:{jti}"
ALGORITHM = "HS256"
#: The claim of an operator's token that reads every job (``cxr token issue --admin``).
ADMIN_CLAIM = "admin"


def init_auth(app: Flask) -> JWTManager:
    app.config.update(
        JWT_SECRET_KEY=app.config["CXR_JWT_SECRET"],
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_HEADER_NAME="Authorization",
        JWT_HEADER_TYPE="",
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(days=app.config["CXR_TOKEN_DAYS"]),
        JWT_ERROR_MESSAGE_KEY="Message",
    )
    manager = JWTManager(app)

    @app.before_request
    def _accept_bearer() -> None:
        # The contract's clients send the token raw; accept "Bearer <token>" as well.
        value = request.environ.get("HTTP_AUTHORIZATION", "")
        if value[:7].lower() == "bearer ":
            request.environ["HTTP_AUTHORIZATION"] = value[7:].strip()

    def refuse(message: str) -> Callable[..., Any]:
        return lambda *_: envelope(401, message, result="Failure")

    manager.unauthorized_loader(refuse("Token missing"))
    manager.expired_token_loader(refuse("Token expired"))
    manager.invalid_token_loader(refuse("Invalid token"))
    manager.revoked_token_loader(refuse("Invalid token"))

    @manager.token_in_blocklist_loader
    def _is_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        # A token that cannot be revoked (no jti) or never expires (no exp) is refused,
        # even with a valid signature: `cxr token issue` never makes one.
        jti = payload.get("jti")
        if not jti or "exp" not in payload:
            return True
        return bool(app.extensions["cxr_redis"].exists(REVOKED_KEY.format(jti=jti)))

    return manager


def issue_token(app: Flask, subject: str, days: float | None = None, *, admin: bool = False) -> str:
    """A signed token for ``subject``, valid ``days`` (default ``CXR_TOKEN_DAYS``); never unlimited.

    ``admin``: the token reads every job, not only its subject's own.
    """
    if days is not None and days <= 0:
        raise ValueError("a token must expire: --days must be positive")
    with app.app_context():
        expires = timedelta(days=days) if days is not None else None
        claims = {ADMIN_CLAIM: True} if admin else None
        return str(create_access_token(identity=subject, expires_delta=expires or None, additional_claims=claims))


def may_read_job(owner: str | None) -> bool:
    """In a request with a valid token: is this token the job's owner, or an admin's?

    A job recorded without an owner (by an API older than the rule) is an admin's only.
    """
    claims = get_jwt()
    if claims.get(ADMIN_CLAIM) is True:
        return True
    return owner is not None and claims.get("sub") == owner


def revoke(client: redis.Redis, secret: str, token_or_jti: str) -> str:
    """Deny a token by its ``jti`` (or by the token itself, whose ``jti`` is read).

    Given a whole token (signature checked), the deny-list entry expires with the token;
    given only a ``jti``, it is kept until deleted.
    """
    jti, ttl = token_or_jti.strip(), None
    if jti.count(".") == 2:
        claims = pyjwt.decode(jti, secret, algorithms=[ALGORITHM], options={"verify_exp": False})
        jti = str(claims["jti"])
        if "exp" in claims:
            ttl = max(int(claims["exp"] - time.time()) + 60, 60)
    client.set(REVOKED_KEY.format(jti=jti), "1", ex=ttl)
    return jti
