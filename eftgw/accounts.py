"""AccountService: temporary SFTP accounts, each bound to one case (core: no SSH in here).

An account is what a customer types into WinSCP, FileZilla or ``sftp`` when the browser client cannot be used:
a random username, a random password, and an expiry 120 hours after creation. The operator CLI and the
portal's integration API create, show, list and revoke accounts through this service; the SFTP transport
asks it to log a user in.

What is stored (table ``sftp_accounts``): the password's argon2id hash, which every login is verified
against, and the password sealed with AES-256-GCM under the gateway's account key (a file in the data dir,
mode 0600, the same on every node), so that it can be shown again while the account is active. The password
is never stored in plain text. Optional authorized public keys (OpenSSH one-line format) let an account log in
with a key instead; the transport verifies the signature against exactly these keys.

A login is refused, with one and the same error, for an unknown username, a wrong password, an expired or
revoked account and a case that is not open; unknown usernames cost the same argon2id verification as known
ones so that replies and timing do not tell them apart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eftgw.audit import AuditLog
from eftgw.cases import CaseService
from eftgw.clock import Clock, isoformat
from eftgw.errors import BadRequest, CaseNotFound, DomainError, Forbidden, Unauthenticated
from eftgw.events import Event, EventFactory
from eftgw.model import CaseState, Principal, Role, SftpAccount, SystemPrincipal, Via
from eftgw.pagination import Page, decode_cursor, page_of
from eftgw.ports import AccountRepository
from eftgw.secretfile import load_or_create

log = logging.getLogger("eftgw.accounts")

ACCOUNT_LIFETIME = dt.timedelta(hours=120)
USERNAME = re.compile(r"^sftp-[a-z2-7]{12}$")
_SEALED_PREFIX = "v1:"
_KEY_TYPES = {
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",  # the key format; logins still need an rsa-sha2-256/512 signature (no SHA-1)
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}


class AccountNotFound(DomainError):
    code = "account_not_found"
    status = 404
    default_message = "No such SFTP account."


class AccountInactive(DomainError):
    code = "account_inactive"
    status = 410
    default_message = "This SFTP account has expired or was revoked; create a new one."


@dataclass(frozen=True)
class IssuedAccount:
    """An account together with its password in clear, for the one who created or shows it."""

    account: SftpAccount
    password: str


def load_or_create_account_key(path: Path) -> bytes:
    """The AES-256 key that seals account passwords: made once (mode 0600) and kept."""
    key = load_or_create(path, lambda: AESGCM.generate_key(bit_length=256))
    if len(key) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes (an AES-256 key)")
    return key


class PasswordSealer:
    """AES-256-GCM sealing of account passwords; the username is bound in as associated data."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, username: str, password: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, password.encode(), username.encode())
        return _SEALED_PREFIX + base64.b64encode(nonce + sealed).decode()

    def unseal(self, username: str, sealed: str) -> str:
        if not sealed.startswith(_SEALED_PREFIX):
            raise ValueError("unknown sealed password format")
        raw = base64.b64decode(sealed.removeprefix(_SEALED_PREFIX))
        try:
            return self._aead.decrypt(raw[:12], raw[12:], username.encode()).decode()
        except InvalidTag as exc:
            raise ValueError("the sealed password does not open with this gateway's account key") from exc


def new_password() -> str:
    """24 URL-safe random characters (144 bits), starting and ending with a letter or digit: a password that
    begins with ``-`` is taken for an option by command-line clients (rclone, lftp), one ending in ``_`` or
    ``-`` is easy to lose when copied."""
    while True:
        password = secrets.token_urlsafe(18)
        if password[0].isalnum() and password[-1].isalnum():
            return password


def account_view(
    account: SftpAccount, *, host: str, port: int, now: dt.datetime, password: str | None = None
) -> dict[str, object]:
    """What the CLI and the API show of an account (the password only to those who may see it)."""
    state = "revoked" if account.revoked_at else ("active" if account.active_at(now) else "expired")
    out: dict[str, object] = {
        "username": account.username,
        "host": host,
        "port": port,
        "case_id": account.case_id,
        "created_at": isoformat(account.created_at),
        "expires_at": isoformat(account.expires_at),
        "state": state,
        "authorized_keys": len(account.authorized_keys),
    }
    if password is not None:
        out["password"] = password
    return out


def normalize_public_key(text: str) -> str:
    """Check an OpenSSH public key line (``type base64 [comment]``) and return it as ``type base64``."""
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise BadRequest("An authorized key must be one OpenSSH public key line, e.g. 'ssh-ed25519 AAAA...'.")
    line = f"{parts[0]} {parts[1]}"
    if not parts[0].startswith("sk-"):
        try:
            serialization.load_ssh_public_key(line.encode())
        except (ValueError, binascii.Error) as exc:
            raise BadRequest("The authorized key does not parse as an OpenSSH public key.") from exc
    return line


class AccountService:
    """Create, show, list and revoke SFTP accounts; log users in with them."""

    def __init__(
        self,
        repo: AccountRepository,
        cases: CaseService,
        audit: AuditLog,
        clock: Clock,
        sealer: PasswordSealer,
        *,
        events: EventFactory,
        lifetime: dt.timedelta = ACCOUNT_LIFETIME,
        hasher: PasswordHasher | None = None,
        max_parallel_verifications: int = 2,
        endpoint: tuple[str, int] = ("127.0.0.1", 2222),
    ) -> None:
        self.repo = repo
        self.cases = cases
        self.audit = audit
        self.clock = clock
        self.sealer = sealer
        self.events = events
        self.lifetime = lifetime
        self.endpoint = endpoint  # the host and port customers put in their SFTP client
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        # argon2id costs memory and CPU by design: bound how many run at once so a flood of logins
        # queues up instead of exhausting the node.
        self._verifying = asyncio.Semaphore(max_parallel_verifications)
        self._decoy_hash: str | None = None
        self._revocation_listeners: list[Callable[[str], None]] = []

    # administration ------------------------------------------------------------------------------

    async def create(
        self, principal: Principal, case_id: str, *, authorized_keys: list[str] | None = None
    ) -> IssuedAccount:
        """Create an account for an open case, valid for ``lifetime`` (120 hours) from now."""
        self._require_admin(principal)
        await self.cases.require_open(case_id)
        keys = [normalize_public_key(k) for k in authorized_keys or []]
        username = "sftp-" + base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
        password = new_password()
        now = self.clock.now()
        password_hash = await asyncio.to_thread(self.hasher.hash, password)
        account = SftpAccount(
            username=username,
            case_id=case_id,
            password_hash=password_hash,
            password_sealed=self.sealer.seal(username, password),
            created_at=now,
            expires_at=now + self.lifetime,
            created_by=principal.user,
            authorized_keys=keys,
        )
        created = self.events.make(
            "sftp_account.created",
            case_id,
            username=username,
            expires_at=isoformat(account.expires_at),
            by=principal.user,
        )
        await self.repo.add_account(account, [created])
        await self.audit.record(
            "sftp.account.created",
            principal,
            case_id,
            username,
            expires_at=account.expires_at.isoformat(),
            keys=len(keys),
        )
        return IssuedAccount(account, password)

    async def show(self, principal: Principal, username: str) -> IssuedAccount:
        """The account and its password, while it is active; :class:`AccountInactive` after that."""
        self._require_admin(principal)
        account = await self._get(username)
        if not account.active_at(self.clock.now()):
            raise AccountInactive()
        return IssuedAccount(account, self.sealer.unseal(account.username, account.password_sealed))

    async def get(self, principal: Principal, username: str) -> SftpAccount:
        self._require_admin(principal)
        return await self._get(username)

    async def list_accounts(self, principal: Principal, case_id: str | None = None) -> list[SftpAccount]:
        self._require_admin(principal)
        return await self.repo.list_accounts(case_id)

    async def page_accounts(
        self, principal: Principal, case_id: str, limit: int, cursor: str | None = None
    ) -> Page[SftpAccount]:
        """One page of the case's accounts, oldest first, after ``cursor`` if given."""
        self._require_admin(principal)
        after = decode_cursor(cursor) if cursor else None
        accounts = await self.repo.list_accounts(case_id, limit + 1, after)
        return page_of(accounts, limit, lambda a: (a.created_at, a.username))

    async def revoke(self, principal: Principal, username: str) -> SftpAccount:
        """Revoke an account: no new logins, and live sessions are cut (listeners are told at once)."""
        self._require_admin(principal)
        account = await self._get(username)
        if account.revoked_at is None:
            revoked = self.events.make(
                "sftp_account.revoked", account.case_id, username=username, by=principal.user
            )
            if await self.repo.revoke_account(username, self.clock.now(), [revoked]):
                await self.audit.record("sftp.account.revoked", principal, account.case_id, username)
            account = await self._get(username)
        for listener in list(self._revocation_listeners):
            listener(username)
        return account

    async def add_key(self, principal: Principal, username: str, key: str) -> SftpAccount:
        """Authorize one more public key for an active account."""
        self._require_admin(principal)
        account = await self._get(username)
        if not account.active_at(self.clock.now()):
            raise AccountInactive()
        line = normalize_public_key(key)
        if line not in account.authorized_keys:
            account.authorized_keys.append(line)
            await self.repo.set_account_keys(username, account.authorized_keys)
            await self.audit.record("sftp.account.key_added", principal, account.case_id, username)
        return account

    async def revoke_case(self, principal: Principal, case_id: str) -> int:
        """Revoke every active account of a case (its closure); return how many were revoked."""
        now = self.clock.now()
        revoked = 0
        for account in await self.repo.list_accounts(case_id):
            if account.revoked_at is None and account.expires_at > now:
                await self.revoke(principal, account.username)
                revoked += 1
        return revoked

    async def report_expired(self, principal: SystemPrincipal, batch: int = 500) -> int:
        """Store one ``sftp_account.expired`` event for each account that expired (unrevoked) and was not
        reported yet: the periodic sweep's job. Each expiry is reported exactly once, even if two sweeps
        overlap (the repository marks the account in the event's transaction). How many were reported."""
        if not isinstance(principal, SystemPrincipal):  # a caller outside the type checker's sight
            raise Forbidden("Only the gateway's sweep reports expired accounts.")
        reported = 0
        while True:
            now = self.clock.now()
            due = await self.repo.accounts_expired_unreported(now, batch)
            if not due:
                return reported
            reports: list[tuple[str, Event]] = [
                (
                    account.username,
                    self.events.make(
                        "sftp_account.expired",
                        account.case_id,
                        username=account.username,
                        expired_at=isoformat(account.expires_at),
                    ),
                )
                for account in due
            ]
            reported += await self.repo.report_expired_accounts(reports, now)
            if len(due) < batch:
                return reported

    async def current_for_case(self, principal: Principal, case_id: str) -> IssuedAccount | None:
        """The case's newest active account (and its password), for the case's own customer or an engineer."""
        if not principal.may_access_case(case_id):
            raise AccountNotFound()
        now = self.clock.now()
        active = [a for a in await self.repo.list_accounts(case_id) if a.active_at(now)]
        if not active:
            return None
        account = max(active, key=lambda a: a.created_at)
        return IssuedAccount(account, self.sealer.unseal(account.username, account.password_sealed))

    def view(self, account: SftpAccount, password: str | None = None) -> dict[str, object]:
        """What the CLI and the API show of an account, with where to connect."""
        host, port = self.endpoint
        return account_view(account, host=host, port=port, now=self.clock.now(), password=password)

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(username)`` whenever an account is revoked through this service."""
        self._revocation_listeners.append(listener)

    # logins --------------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Make the decoy hash now, so that even the first login of an unknown user costs what others do."""
        if self._decoy_hash is None:
            self._decoy_hash = await asyncio.to_thread(self.hasher.hash, secrets.token_urlsafe(18))

    async def login_password(self, username: str, password: str, remote: str | None) -> Principal:
        """The customer principal of a valid login; :class:`Unauthenticated` (always the same) otherwise."""
        account = await self.repo.get_account(username) if USERNAME.match(username) else None
        ok = await self._verify(account.password_hash if account else None, password)
        if account is None or not ok:
            raise Unauthenticated()
        return await self._admit(account, remote, method="password")

    async def authorized_keys(self, username: str) -> list[str]:
        """The public keys a login as ``username`` may use now; empty for unknown or inactive accounts."""
        account = await self.repo.get_account(username) if USERNAME.match(username) else None
        if account is None or not await self._usable(account):
            return []
        return list(account.authorized_keys)

    async def key_principal(self, username: str, key_line: str, remote: str | None) -> Principal:
        """The principal a login with ``key_line`` would be, if it is authorized now; records nothing.

        The transport calls this before it checks the signature, then :meth:`record_login` once the
        signature is verified.
        """
        account = await self.repo.get_account(username) if USERNAME.match(username) else None
        if account is None or key_line not in account.authorized_keys or not await self._usable(account):
            raise Unauthenticated()
        return self._principal(account, remote)

    async def record_login(self, principal: Principal, *, method: str) -> None:
        """Record a successful login (time on the account, audit event)."""
        await self.repo.record_account_login(principal.user, self.clock.now())
        await self.audit.record("sftp.login", principal, principal.case_id, principal.user, method=method)

    async def check_session(self, username: str) -> bool:
        """Whether a live session of ``username`` may go on: account active and its case open."""
        account = await self.repo.get_account(username)
        return account is not None and await self._usable(account)

    async def _admit(self, account: SftpAccount, remote: str | None, *, method: str) -> Principal:
        if not await self._usable(account):
            raise Unauthenticated()
        principal = self._principal(account, remote)
        await self.record_login(principal, method=method)
        return principal

    @staticmethod
    def _principal(account: SftpAccount, remote: str | None) -> Principal:
        return Principal(account.username, Role.CUSTOMER, account.case_id, via=Via.SFTP, remote=remote)

    async def _usable(self, account: SftpAccount) -> bool:
        if not account.active_at(self.clock.now()):
            return False
        try:
            case = await self.cases.get(account.case_id)
        except CaseNotFound:
            return False
        return case.state is CaseState.OPEN

    async def _verify(self, password_hash: str | None, password: str) -> bool:
        """argon2id verification; with no hash (unknown user) a decoy hash is verified at the same cost."""
        async with self._verifying:
            if self._decoy_hash is None:
                self._decoy_hash = await asyncio.to_thread(self.hasher.hash, secrets.token_urlsafe(18))
            target = password_hash or self._decoy_hash
            try:
                await asyncio.to_thread(self.hasher.verify, target, password)
            except (VerificationError, InvalidHashError):
                return False
            return password_hash is not None

    # helpers -------------------------------------------------------------------------------------

    async def _get(self, username: str) -> SftpAccount:
        account = await self.repo.get_account(username)
        if account is None:
            raise AccountNotFound()
        return account

    @staticmethod
    def _require_admin(principal: Principal) -> None:
        if principal.role not in (Role.SERVICE, Role.ENGINEER):
            raise Forbidden("Only operators, the portal and engineers manage SFTP accounts.")
