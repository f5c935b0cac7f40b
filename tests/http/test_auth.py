"""Who may do what: bearer tokens, the launch flow and its session cookie, CSRF, roles, and case binding."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eftgw.model import SYSTEM
from tests.support import RunningGateway, http_session, tus_headers


def forged(gw: RunningGateway, **changes) -> str:
    """A token like the gateway's, with some claims or the key changed."""
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {
        "iss": gw.gateway.settings.token_issuer,
        "aud": gw.gateway.settings.audience,
        "sub": "mallory",
        "role": "customer",
        "case": "C-1",
        "typ": "access",
        "jti": "j1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    key = changes.pop("key", gw.gateway.signer.key)
    kid = changes.pop("kid", gw.gateway.signer.kid)
    for name, value in changes.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


async def status_of(gw: RunningGateway, token: str | None, case_id: str = "C-1") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http_session() as s, s.get(f"{gw.url}/api/v1/cases/{case_id}/files", headers=headers) as resp:
        return resp.status


async def test_missing_and_malformed_credentials_are_401(gw: RunningGateway) -> None:
    """No credentials, a non-bearer scheme, or garbage all get 401 with a JSON explanation."""
    assert await status_of(gw, None) == 401
    assert await status_of(gw, "not-a-jwt") == 401
    basic = {"Authorization": "Basic YTpi"}
    async with http_session() as s, s.get(f"{gw.url}/api/v1/cases/C-1/files", headers=basic) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["code"] == "unauthenticated" and "Bearer" in body["message"]


async def test_forged_and_expired_tokens_are_401(gw: RunningGateway) -> None:
    """Wrong key, unknown kid, wrong audience or issuer, expired, not yet valid, or missing claims: 401."""
    assert await status_of(gw, forged(gw)) == 200
    assert await status_of(gw, forged(gw, key=Ed25519PrivateKey.generate())) == 401
    assert await status_of(gw, forged(gw, kid="other")) == 401
    assert await status_of(gw, forged(gw, aud="eftgw-emea")) == 401
    assert await status_of(gw, forged(gw, iss="someone-else")) == 401
    now = int(dt.datetime.now(dt.UTC).timestamp())
    assert await status_of(gw, forged(gw, exp=now - 120)) == 401
    assert await status_of(gw, forged(gw, nbf=now + 600, exp=now + 900)) == 401
    for claim in ("exp", "nbf", "aud", "iss", "jti"):
        assert await status_of(gw, forged(gw, **{claim: None})) == 401, claim
    assert await status_of(gw, forged(gw, typ="launch")) == 401


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 10**20},
        {"exp": 1e300},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"exp": True},
        {"exp": "2030-01-01"},
        {"exp": -(10**20)},
        {"nbf": 10**20},
        {"nbf": -1},
        {"iat": 10**20},
        {"iat": "now"},
    ],
)
async def test_signed_tokens_with_absurd_dates_are_401(gw: RunningGateway, claims: dict[str, object]) -> None:
    """A correctly signed token whose exp, nbf or iat is not a date (10**20, 1e300, NaN, true, a string) is
    refused with 401, for API calls and for the launch, instead of overflowing into a 500."""
    token = forged(gw, **claims)
    assert await status_of(gw, token) == 401
    launch = forged(gw, typ="launch", **claims)
    async with http_session() as s, s.post(f"{gw.url}/api/v1/session", json={"token": launch}) as resp:
        assert resp.status == 401 and (await resp.json())["code"] == "unauthenticated"


async def test_unsigned_and_hmac_tokens_are_refused(gw: RunningGateway) -> None:
    """Only EdDSA is accepted: 'alg: none' and HS256 tokens (even 'signed' with the public key) are 401."""
    payload = jwt.decode(forged(gw), options={"verify_signature": False})
    none_token = jwt.encode(payload, None, algorithm="none", headers={"kid": gw.gateway.signer.kid})
    assert await status_of(gw, none_token) == 401
    hs = jwt.encode(
        payload, "secret-secret-secret-secret-1234", algorithm="HS256", headers={"kid": gw.gateway.signer.kid}
    )
    assert await status_of(gw, hs) == 401


async def test_token_for_another_case_sees_404(gw: RunningGateway) -> None:
    """A customer of C-2 cannot tell whether C-1's uploads exist: every request is a 404."""
    await gw.gateway.cases.open(SYSTEM, "C-2")
    owner, other = gw.token("C-1"), gw.token("C-2", user="bob")
    async with http_session() as s:
        async with s.post(gw.uploads_url("C-1"), headers=tus_headers(owner, Upload_Length="3")) as resp:
            url = resp.headers["Location"]
        async with s.head(url, headers=tus_headers(other)) as resp:
            assert resp.status == 404
        same_id_other_case = url.replace("/C-1/", "/C-2/")
        async with s.head(same_id_other_case, headers=tus_headers(other)) as resp:
            assert resp.status == 404
        h = tus_headers(other, Upload_Offset="0", Content_Type="application/offset+octet-stream")
        async with s.patch(url, data=b"abc", headers=h) as resp:
            assert resp.status == 404
        async with s.post(gw.uploads_url("C-1"), headers=tus_headers(other, Upload_Length="3")) as resp:
            assert resp.status == 404
    assert await status_of(gw, other, "C-1") == 404


async def test_closed_case_refuses_uploads_with_403(gw: RunningGateway) -> None:
    """Closing a case stops new uploads and chunks of uploads already started, with a plain message."""
    token = gw.token("C-1")
    async with http_session() as s:
        async with s.post(gw.uploads_url("C-1"), headers=tus_headers(token, Upload_Length="6")) as resp:
            url = resp.headers["Location"]
        await gw.gateway.cases.close(SYSTEM, "C-1")
        async with s.post(gw.uploads_url("C-1"), headers=tus_headers(token, Upload_Length="3")) as resp:
            assert resp.status == 403
            body = await resp.json()
            assert body["code"] == "case_closed" and "closed" in body["message"]
        h = tus_headers(token, Upload_Offset="0", Content_Type="application/offset+octet-stream")
        async with s.patch(url, data=b"abc", headers=h) as resp:
            assert resp.status == 403
    assert await status_of(gw, token) == 200  # listing a closed case's files still works


async def test_engineer_reaches_any_case_and_uploads_for_the_customer(gw: RunningGateway) -> None:
    """An engineer token without a case lists any case; files it uploads are marked as from the engineer."""
    await gw.gateway.cases.open(SYSTEM, "C-9")
    engineer = gw.token(None, role="engineer", user="eve")
    assert await status_of(gw, engineer, "C-9") == 200
    async with http_session() as s:
        h = tus_headers(engineer, Upload_Length="2", Content_Type="application/offset+octet-stream")
        async with s.post(gw.uploads_url("C-9"), data=b"hi", headers=h) as resp:
            assert resp.status == 201
        customer = gw.token("C-9", user="carol")
        async with s.get(
            f"{gw.url}/api/v1/cases/C-9/files", headers={"Authorization": f"Bearer {customer}"}
        ) as r:
            (record,) = await r.json()
    assert record["source"] == "engineer" and record["uploaded_by"] == "eve"


async def test_service_token_is_for_the_integration_api_only(gw: RunningGateway) -> None:
    """The service role opens and closes cases but reads no files; no other role uses the integration API."""
    service = gw.token(None, role="service", user="portal")
    customer = gw.token("C-1")
    async with http_session() as s:
        h = {"Authorization": f"Bearer {service}"}
        async with s.post(f"{gw.url}/api/v1/integration/cases/C-7/open", headers=h) as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "open"
        async with s.post(
            f"{gw.url}/api/v1/integration/cases/C-7/close",
            headers=h,
            json={"closed_at": "2026-01-02T03:04:05Z"},
        ) as resp:
            body = await resp.json()
            assert body["state"] == "closed" and body["closed_at"] == "2026-01-02T03:04:05Z"
            assert body["purge_due_at"] == "2026-02-01T03:04:05Z"
        async with s.post(f"{gw.url}/api/v1/integration/cases/C-7/reopen", headers=h) as resp:
            assert (await resp.json())["state"] == "open"
        async with s.post(
            f"{gw.url}/api/v1/integration/cases/C-1/close", headers={"Authorization": f"Bearer {customer}"}
        ) as resp:
            assert resp.status == 403
    assert await status_of(gw, service) == 404


async def test_launch_sets_a_host_only_secure_cookie_and_is_single_use(gw: RunningGateway) -> None:
    """A launch token becomes a __Host- cookie (Secure, HttpOnly, SameSite=Strict) once; a replay fails."""
    token = gw.launch_token("C-1")
    async with http_session() as s:
        async with s.post(f"{gw.url}/api/v1/session", json={"token": token}) as resp:
            assert resp.status == 201
            session = await resp.json()
            cookie = resp.headers["Set-Cookie"]
        assert cookie.startswith("__Host-eftgw_session=")
        for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute in cookie
        assert "Domain" not in cookie
        assert session["case_id"] == "C-1" and session["role"] == "customer" and session["csrf_token"]
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files") as resp:
            assert resp.status == 200
        async with s.get(f"{gw.url}/api/v1/session") as resp:
            assert (await resp.json())["csrf_token"] == session["csrf_token"]
    async with http_session() as s2, s2.post(f"{gw.url}/api/v1/session", json={"token": token}) as resp:
        assert resp.status == 401
        assert "already used" in (await resp.json())["message"]
    events = [e.action for e in await gw.gateway.repo.list_audit()]
    assert "login.succeeded" in events and "login.failed" in events


async def test_access_tokens_and_long_lived_tokens_cannot_launch(gw: RunningGateway) -> None:
    """Only short-lived launch tokens open a session: an API token or a long-lived launch token is 401."""
    async with http_session() as s:
        async with s.post(f"{gw.url}/api/v1/session", json={"token": gw.token("C-1")}) as resp:
            assert resp.status == 401
        async with s.post(
            f"{gw.url}/api/v1/session", json={"token": gw.launch_token("C-1", ttl=3600)}
        ) as resp:
            assert resp.status == 401


async def test_form_launch_redirects_and_sets_the_cookie(gw: RunningGateway) -> None:
    """POST /launch with a form token redirects to the client with the session cookie set."""
    async with http_session() as s:
        async with s.post(
            f"{gw.url}/launch", data={"token": gw.launch_token("C-1")}, allow_redirects=False
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/app"
            assert "__Host-eftgw_session=" in resp.headers["Set-Cookie"]
        async with s.get(f"{gw.url}/api/v1/session") as resp:
            assert resp.status == 200


async def test_cookie_requests_need_csrf_token_and_same_origin(gw: RunningGateway) -> None:
    """With the session cookie, unsafe requests without the CSRF token or from another origin are 403."""
    async with http_session() as s:
        async with s.post(f"{gw.url}/api/v1/session", json={"token": gw.launch_token("C-1")}) as resp:
            csrf = (await resp.json())["csrf_token"]
        h = {"Tus-Resumable": "1.0.0", "Upload-Length": "3"}
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 403 and (await resp.json())["code"] == "csrf_rejected"
        async with s.post(gw.uploads_url("C-1"), headers={**h, "X-CSRF-Token": "wrong"}) as resp:
            assert resp.status == 403
        evil = {**h, "X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        async with s.post(gw.uploads_url("C-1"), headers=evil) as resp:
            assert resp.status == 403
        async with s.post(
            gw.uploads_url("C-1"), headers={**h, "X-CSRF-Token": csrf, "Origin": gw.url}
        ) as resp:
            assert resp.status == 201
        async with s.delete(f"{gw.url}/api/v1/session", headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 204
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files") as resp:
            assert resp.status == 401


async def test_cors_exposes_tus_headers_to_configured_origins_only(tmp_path) -> None:
    """A configured origin gets CORS preflight answers exposing the tus headers; others get none."""
    from tests.support import running_gateway

    async with running_gateway(tmp_path / "gw", cors_origins=["https://portal.example"]) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        pre = {"Origin": "https://portal.example", "Access-Control-Request-Method": "PATCH"}
        async with http_session() as s:
            async with s.options(gw.uploads_url("C-1"), headers=pre) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "https://portal.example"
                assert "Upload-Offset" in resp.headers["Access-Control-Allow-Headers"]
            h = tus_headers(gw.token("C-1"), Upload_Length="1", Origin="https://portal.example")
            async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
                exposed = resp.headers["Access-Control-Expose-Headers"]
                assert "Location" in exposed and "Upload-Offset" in exposed and "Tus-Resumable" in exposed
            bad = {**pre, "Origin": "https://evil.example"}
            async with s.options(gw.uploads_url("C-1"), headers=bad) as resp:
                assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
