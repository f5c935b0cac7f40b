"""The composition root: builds the core services, store and repository from :class:`Settings`.

Both ``serve`` and the admin CLI use :class:`Gateway`, so they act on the same data the same way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from eftgw.accounts import AccountService, PasswordSealer, load_or_create_account_key
from eftgw.audit import AuditLog
from eftgw.auth import (
    AuthService,
    TokenSigner,
    TokenVerifier,
    key_id,
    load_or_create_signing_key,
    load_trusted_keys,
)
from eftgw.cases import CaseService
from eftgw.clock import Clock, SystemClock
from eftgw.config import Settings
from eftgw.events import EventFactory
from eftgw.files import FileService
from eftgw.locks import LocalUploadLocks, UploadLocks
from eftgw.metadata import SqlRepository
from eftgw.quotas import CreationRate
from eftgw.retention.purge import Retention
from eftgw.storage import ObjectStore
from eftgw.storage.budget import keep_freed_buffers
from eftgw.uploads import UploadService


def build_store(settings: Settings) -> ObjectStore:
    if settings.storage == "s3":
        from eftgw.storage.s3 import S3Store

        return S3Store.from_settings(settings)
    from eftgw.storage.filesystem import FilesystemStore

    return FilesystemStore(settings.resolved_storage_dir)


def build_locks(repo: SqlRepository) -> UploadLocks:
    """Upload locks in the process for one node (SQLite); database leases for several nodes (PostgreSQL)."""
    if repo.dialect == "postgresql":
        from eftgw.metadata.locks import SqlUploadLocks

        return SqlUploadLocks(repo)
    return LocalUploadLocks()


@dataclass
class Gateway:
    settings: Settings
    clock: Clock
    repo: SqlRepository
    store: ObjectStore
    locks: UploadLocks
    audit: AuditLog
    cases: CaseService
    uploads: UploadService
    files: FileService
    signer: TokenSigner
    verifier: TokenVerifier
    auth: AuthService
    accounts: AccountService
    retention: Retention
    events: EventFactory

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None) -> Gateway:
        clock = clock or SystemClock(dt.timedelta(seconds=settings.clock_offset))
        data_dir = settings.resolved_data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        repo = SqlRepository(settings.resolved_database_url)
        store = build_store(settings)
        locks = build_locks(repo)
        audit = AuditLog(repo, clock)
        events = EventFactory(settings.region, clock)  # mints the integration events the services store
        retention = dt.timedelta(days=settings.retention_days)
        cases = CaseService(repo, clock, audit, retention, events=events)
        uploads = UploadService(
            repo,
            store,
            cases,
            locks,
            audit,
            clock,
            region=settings.region,
            events=events,
            expiry=dt.timedelta(seconds=settings.upload_expiry),
            max_size=settings.max_upload_size,
            max_active_per_case=settings.max_active_uploads_per_case,
            creation_rate=CreationRate(settings.upload_creation_rate, settings.upload_creation_burst),
        )
        files = FileService(repo, store, cases, audit, events=events)
        signing_key = load_or_create_signing_key(
            settings.signing_key or data_dir / "keys" / "issuer-ed25519.pem"
        )
        signer = TokenSigner(signing_key, settings.token_issuer, settings.audience, clock)
        keys = load_trusted_keys(settings.trusted_keys_dir)
        keys[key_id(signing_key.public_key())] = signing_key.public_key()
        verifier = TokenVerifier(keys, settings.token_issuer, settings.audience, clock)
        auth = AuthService(
            repo,
            verifier,
            audit,
            clock,
            session_ttl=dt.timedelta(seconds=settings.session_ttl),
            launch_max_ttl=dt.timedelta(seconds=settings.launch_token_max_ttl),
        )
        account_key = load_or_create_account_key(
            settings.sftp_account_key or data_dir / "keys" / "sftp-accounts.key"
        )
        accounts = AccountService(
            repo,
            cases,
            audit,
            clock,
            PasswordSealer(account_key),
            events=events,
            endpoint=(settings.sftp_public_host, settings.sftp_port),
        )
        cases.on_closed.append(accounts.revoke_case)  # closing a case revokes its SFTP accounts
        purges = Retention(
            cases,
            files,
            uploads,
            auth,
            audit,
            clock,
            retention,
            accounts=accounts,
            events=events,
            outbox=repo,
        )
        return cls(
            settings,
            clock,
            repo,
            store,
            locks,
            audit,
            cases,
            uploads,
            files,
            signer,
            verifier,
            auth,
            accounts=accounts,
            retention=purges,
            events=events,
        )

    async def start(self) -> None:
        # once per process, before any body arrives: upload buffers are freed a block or a part at a time
        keep_freed_buffers(self.settings.upload_memory)
        await self.repo.migrate()
        await self.store.open()

    async def close(self) -> None:
        await self.locks.close()  # its heartbeat uses the database: stop it before the engine goes
        await self.store.close()
        await self.repo.close()
