"""JWT: every protected route refuses without a token; expired, forged and revoked tokens
are refused with the contract's messages; raw and Bearer tokens both work; the CLI
issues and revokes real tokens; unsafe secrets stop the service from starting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import jwt
import pytest

from api.config import ConfigError, load_config
from tests.support.service import REDIS_TEST_URL, ROOT, SECRET

PROTECTED = [
    ("post", "/single_inference"),
    ("post", "/bulk_inference"),
    ("get", "/jobs/0123456789abcdef"),
    ("get", "/health"),
]


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "tester",
        "jti": str(uuid.uuid4()),
        "type": "access",
        "fresh": False,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_need_a_token(client: Any, method: str, path: str) -> None:
    response = getattr(client, method)(path, json={})
    assert response.status_code == 401
    assert response.get_json() == {"Result": "Failure", "Data": None, "Message": "Token missing"}


def test_ping_needs_no_token_and_no_envelope(client: Any) -> None:
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("scheme", ["", "Bearer ", "bearer "])
def test_raw_and_bearer_tokens_are_accepted(client: Any, token: str, scheme: str) -> None:
    response = client.get("/jobs/does-not-exist", headers={"Authorization": scheme + token})
    assert response.status_code == 404  # authenticated, then the job is unknown


# The HS512 forgery reuses the server's 52-byte secret on purpose; PyJWT warns about it.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("expired", lambda: jwt.encode(_claims(exp=int(time.time()) - 10), SECRET, "HS256"), "Token expired"),
        ("wrong key", lambda: jwt.encode(_claims(), "another-secret-" + "y" * 40, "HS256"), "Invalid token"),
        ("wrong algorithm", lambda: jwt.encode(_claims(), SECRET, "HS512"), "Invalid token"),
        ("alg none", lambda: jwt.encode(_claims(), None, algorithm="none"), "Invalid token"),
        ("not yet valid", lambda: jwt.encode(_claims(nbf=int(time.time()) + 600), SECRET, "HS256"), "Invalid token"),
        ("garbage", lambda: "not-a-token", "Invalid token"),
        ("truncated", lambda: jwt.encode(_claims(), SECRET, "HS256")[:-5], "Invalid token"),
    ],
)
def test_bad_tokens_are_refused(client: Any, name: str, make: Any, message: str) -> None:
    response = client.get("/jobs/x", headers={"Authorization": make()})
    assert response.status_code == 401, name
    assert response.get_json()["Message"] == message


def _signed(**overrides: Any) -> str:
    return jwt.encode({k: v for k, v in _claims(**overrides).items() if v is not None}, SECRET, "HS256")


# What the attack table above leaves out: headers that are not one token, tokens that are
# not three base64url parts, and correctly signed tokens with claims this server never
# issues (no expiry, no jti to revoke them by, a refresh token, issued in the future).
@pytest.mark.parametrize(
    ("name", "header", "message"),
    [
        ("empty header", lambda: "", "Token missing"),
        ("Bearer without a token", lambda: "Bearer ", "Token missing"),
        ("Basic credentials", lambda: "Basic dXNlcjpwYXNzd29yZA==", "Invalid token"),
        ("two tokens", lambda: f"{_signed()} {_signed()}", "Invalid token"),
        ("four parts", lambda: _signed() + ".e30", "Invalid token"),
        ("signature stripped", lambda: _signed().rsplit(".", 1)[0] + ".", "Invalid token"),
        ("header not JSON", lambda: "bm90LWpzb24." + _signed().split(".", 1)[1], "Invalid token"),
        ("not base64url", lambda: "eyJ!!!.eyJ.x", "Invalid token"),
        ("no expiry", lambda: _signed(exp=None), "Invalid token"),
        ("no jti", lambda: _signed(jti=None), "Invalid token"),
        ("no subject", lambda: _signed(sub=None), "Invalid token"),
        ("refresh token", lambda: _signed(type="refresh"), "Invalid token"),
        ("issued in the future", lambda: _signed(iat=int(time.time()) + 3600), "Invalid token"),
        ("expiry not a number", lambda: _signed(exp="tomorrow"), "Invalid token"),
    ],
)
def test_malformed_headers_and_foreign_claims_are_refused(client: Any, name: str, header: Any, message: str) -> None:
    response = client.get("/jobs/x", headers={"Authorization": header()})
    assert response.status_code == 401, name
    assert response.get_json() == {"Result": "Failure", "Data": None, "Message": message}, name


def test_tampered_payload_is_refused(client: Any, token: str) -> None:
    header, payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"pytest"', b'"admin1"')
    ).decode()
    assert forged_payload != payload
    response = client.get("/jobs/x", headers={"Authorization": f"{header}.{forged_payload}.{signature}"})
    assert response.status_code == 401
    assert response.get_json()["Message"] == "Invalid token"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CXR_JWT_SECRET=SECRET, REDIS_URL=REDIS_TEST_URL)
    return subprocess.run(
        [sys.executable, "-m", "cxr", "token", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_issues_a_working_token_and_revokes_it(client: Any) -> None:
    issued = _cli("issue", "--subject", "ris-gateway", "--days", "2")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert issued.stdout == token + "\n" and token.count(".") == 2  # the token alone
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "ris-gateway"
    assert 2 * 86400 - 60 <= claims["exp"] - claims["iat"] <= 2 * 86400
    assert client.get("/jobs/x", headers={"Authorization": token}).status_code == 404

    revoked = _cli("revoke", claims["jti"])
    assert revoked.returncode == 0, revoked.stderr
    response = client.get("/jobs/x", headers={"Authorization": token})
    assert response.status_code == 401
    assert response.get_json()["Message"] == "Invalid token"


def test_cli_issues_admin_tokens_only_when_asked(client: Any, redis_client: Any) -> None:
    """``--admin`` adds the claim that reads every job; a plain token reads its own jobs only."""
    from engine.jobstore import JobStore

    plain, admin = _cli("issue", "--subject", "ris-a"), _cli("issue", "--subject", "ops", "--admin")
    assert plain.returncode == 0 and admin.returncode == 0, plain.stderr + admin.stderr
    plain_token, admin_token = plain.stdout.strip(), admin.stdout.strip()
    assert jwt.decode(admin_token, SECRET, algorithms=["HS256"])["admin"] is True
    assert "admin" not in jwt.decode(plain_token, SECRET, algorithms=["HS256"])
    job_id = uuid.uuid4().hex
    store = JobStore(redis_client, ttl_s=60)
    store.create(job_id, paths=["/in/a.dcm"], input_path="/in", output_path="/out", layout="patient", owner="ris-b")
    try:
        assert client.get(f"/jobs/{job_id}", headers={"Authorization": plain_token}).status_code == 404
        assert client.get(f"/jobs/{job_id}", headers={"Authorization": admin_token}).status_code == 200
    finally:
        store.finish(job_id, {"job_id": job_id, "status": "failed", "total": 1})


def test_revoking_by_token_expires_the_deny_entry_with_the_token(app: Any, redis_client: Any) -> None:
    from api.auth import REVOKED_KEY, issue_token, revoke

    token = issue_token(app, "short-lived", days=1)
    jti = revoke(redis_client, SECRET, token)
    ttl = redis_client.ttl(REVOKED_KEY.format(jti=jti))
    assert 86000 < ttl <= 86400 + 60


def test_cli_refuses_a_token_signed_elsewhere() -> None:
    foreign = jwt.encode(_claims(), "someone-else-" + "z" * 40, "HS256")
    result = _cli("revoke", foreign)
    assert result.returncode == 2
    assert "not signed with this server's secret" in result.stderr


def test_secret_rules() -> None:
    with pytest.raises(ConfigError, match="no JWT secret"):
        load_config({})
    with pytest.raises(ConfigError, match="shorter than 32"):
        load_config({"CXR_ENV": "production", "CXR_JWT_SECRET": "short", "CXR_DATA_ROOTS": "/data"})
    with pytest.raises(ConfigError, match="CXR_DATA_ROOTS"):
        load_config({"CXR_ENV": "production", "CXR_JWT_SECRET": SECRET})
    config = load_config({"CXR_ENV": "production", "CXR_JWT_SECRET": SECRET, "CXR_DATA_ROOTS": "/data"})
    assert config["CXR_JWT_SECRET"] == SECRET
    assert load_config({"CXR_JWT_SECRET": "dev"})["CXR_JWT_SECRET"] == "dev"  # development allows it, with a warning


def test_secret_from_file(tmp_path: Any) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert load_config({"CXR_JWT_SECRET_FILE": str(path)})["CXR_JWT_SECRET"] == SECRET
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config({"CXR_JWT_SECRET_FILE": str(tmp_path / "missing")})
