"""Authentication: Ed25519-signed tokens from the portal, single-use launch tokens, and browser sessions.

Tokens are JWTs (PyJWT) signed with EdDSA only. The gateway verifies them with public keys selected by the
token's ``kid``: one PEM file per kid in ``trusted_keys_dir``, plus the gateway's own key (made in the data
dir on first start) with which the CLI and the integration API mint tokens. Required claims: ``iss``,
``aud``, ``exp``, ``nbf``, ``iat``, ``jti``, ``sub``, ``role``, ``typ`` (``access`` for API bearer tokens,
``launch`` for the one-time browser launch); ``case`` binds a customer to one case.

A launch exchanges a launch token (each ``jti`` once) for a session: a random cookie value of which only the
SHA-256 is stored, with its own CSRF token for unsafe requests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from eftgw.audit import AuditLog
from eftgw.clock import Clock
from eftgw.errors import BadRequest, Unauthenticated
from eftgw.ids import check_case_id, new_secret, secret_hash
from eftgw.model import Principal, Role, Session, Via
from eftgw.ports import SessionRepository
from eftgw.secretfile import load_or_create

log = logging.getLogger("eftgw.auth")

ALGORITHMS = ["EdDSA"]
LEEWAY = dt.timedelta(seconds=30)
MAX_NUMERIC_DATE = 32503680000  # 3000-01-01T00:00:00Z: later "dates" are garbage and overflow arithmetic


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "gw-" + hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's own issuer key: generated once (mode 0600) and kept."""

    def make() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    key = serialization.load_pem_private_key(load_or_create(path, make), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_trusted_keys(directory: Path | None) -> dict[str, Ed25519PublicKey]:
    """Public keys from ``<kid>.pem`` files; anything but Ed25519 is refused."""
    keys: dict[str, Ed25519PublicKey] = {}
    if directory is None or not directory.exists():
        return keys
    for pem in sorted(directory.glob("*.pem")):
        key = serialization.load_pem_public_key(pem.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{pem} is not an Ed25519 public key")
        keys[pem.stem] = key
    return keys


@dataclass(frozen=True)
class Claims:
    sub: str
    role: Role
    case_id: str | None
    typ: str
    jti: str
    exp: dt.datetime
    nbf: dt.datetime


class TokenSigner:
    def __init__(self, key: Ed25519PrivateKey, issuer: str, audience: str, clock: Clock) -> None:
        self.key = key
        self.kid = key_id(key.public_key())
        self.issuer = issuer
        self.audience = audience
        self.clock = clock

    def mint(self, *, role: Role, user: str, case_id: str | None, ttl: int, typ: str = "access") -> str:
        if role is Role.CUSTOMER and not case_id:
            raise BadRequest("A customer token must name its case.")
        if case_id:
            check_case_id(case_id)
        now = self.clock.now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user,
            "role": role.value,
            "typ": typ,
            "jti": uuid.uuid4().hex,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + dt.timedelta(seconds=ttl)).timestamp()),
        }
        if case_id:
            claims["case"] = case_id
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})


def _instant(claim: Any) -> dt.datetime:
    """A NumericDate claim as a time: seconds from 1970 to the year 3000 only (``10**20`` or ``1e308`` is
    not a date, and ``True`` is not a number).

    :raises Unauthenticated: for anything else.
    """
    if isinstance(claim, bool) or not isinstance(claim, int | float) or not 0 <= claim <= MAX_NUMERIC_DATE:
        raise Unauthenticated()
    return dt.datetime.fromtimestamp(int(claim), dt.UTC)


class TokenVerifier:
    def __init__(self, keys: dict[str, Ed25519PublicKey], issuer: str, audience: str, clock: Clock) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.clock = clock

    def verify(self, token: str, typ: str) -> Claims:
        """Verify signature and claims; any failure is :class:`Unauthenticated` with no detail leaked."""
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(str(header.get("kid", "")))
            if key is None or header.get("alg") not in ALGORITHMS:
                raise Unauthenticated()
            payload = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "nbf", "iat", "aud", "iss", "sub", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
            now = self.clock.now()
            exp, nbf = _instant(payload["exp"]), _instant(payload["nbf"])
            _instant(payload["iat"])
            if now > exp + LEEWAY or now + LEEWAY < nbf:
                raise Unauthenticated("The token has expired or is not valid yet.")
            if payload.get("typ") != typ:
                raise Unauthenticated()
            role = Role(payload["role"])
            case_id = payload.get("case")
            if case_id is not None:
                case_id = check_case_id(str(case_id))
            if role is Role.CUSTOMER and not case_id:
                raise Unauthenticated()
            return Claims(str(payload["sub"]), role, case_id, typ, str(payload["jti"]), exp, nbf)
        except Unauthenticated:
            raise
        except (jwt.PyJWTError, ValueError, KeyError, TypeError, OverflowError, BadRequest) as exc:
            raise Unauthenticated() from exc


class AuthService:
    """Turns credentials into a :class:`Principal`, and launch tokens into sessions."""

    COOKIE = "__Host-eftgw_session"

    def __init__(
        self,
        repo: SessionRepository,
        verifier: TokenVerifier,
        audit: AuditLog,
        clock: Clock,
        *,
        session_ttl: dt.timedelta,
        launch_max_ttl: dt.timedelta,
    ) -> None:
        self.repo = repo
        self.verifier = verifier
        self.audit = audit
        self.clock = clock
        self.session_ttl = session_ttl
        self.launch_max_ttl = launch_max_ttl

    async def bearer(self, token: str, remote: str | None) -> Principal:
        claims = self.verifier.verify(token, "access")
        return Principal(claims.sub, claims.role, claims.case_id, via=Via.TOKEN, remote=remote)

    async def launch(self, token: str, remote: str | None) -> tuple[str, Session]:
        """Exchange a launch token for a session; returns the cookie value and the session."""
        try:
            claims = self.verifier.verify(token, "launch")
            if claims.exp - claims.nbf > self.launch_max_ttl + LEEWAY:
                raise Unauthenticated("The launch token lives too long; the portal must mint short ones.")
            if claims.role is Role.SERVICE:
                raise Unauthenticated()
            if not await self.repo.use_launch_jti(claims.jti, claims.exp + LEEWAY):
                raise Unauthenticated("This launch link was already used; open it again from the portal.")
        except Unauthenticated as exc:
            anonymous = Principal("anonymous", Role.CUSTOMER, None, via=Via.LAUNCH, remote=remote)
            await self.audit.record("login.failed", anonymous, None, reason=exc.message)
            raise
        secret = new_secret()
        now = self.clock.now()
        session = Session(
            id_hash=secret_hash(secret),
            user=claims.sub,
            role=claims.role,
            case_id=claims.case_id,
            csrf_token=new_secret(),
            created_at=now,
            expires_at=now + self.session_ttl,
        )
        await self.repo.add_session(session)
        principal = self.session_principal(session, remote)
        await self.audit.record("login.succeeded", principal, claims.case_id, via_launch=True)
        return secret, session

    async def session(self, cookie: str) -> Session:
        session = await self.repo.get_session(secret_hash(cookie))
        if session is None or session.expires_at <= self.clock.now():
            raise Unauthenticated("Your session has expired; open the transfer page again from the portal.")
        return session

    @staticmethod
    def session_principal(session: Session, remote: str | None) -> Principal:
        return Principal(
            session.user,
            session.role,
            session.case_id,
            via=Via.SESSION,
            remote=remote,
            session_id=session.id_hash,
        )

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(session.csrf_token, presented)

    async def forget_expired(self) -> None:
        """Delete expired sessions and launch-token ids (run by the retention sweep)."""
        await self.repo.delete_expired(self.clock.now())

    async def logout(self, session: Session, remote: str | None) -> None:
        await self.repo.delete_session(session.id_hash)
        await self.audit.record("logout", self.session_principal(session, remote), session.case_id)
