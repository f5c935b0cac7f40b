"""Typed settings, read once: defaults, then a TOML file (``--config``), then ``EFTGW_*`` variables.

Secrets are :class:`pydantic.SecretStr` so they never show in ``repr`` or logs; :meth:`Settings.describe`
prints the effective configuration with secrets masked.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import socket
import tomllib
import urllib.parse
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Region = Literal["us", "emea", "apac"]


def split_commas(value: Any) -> Any:
    """A list setting from the environment: ``a,b`` (as the README documents) or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def webhook_secret_bytes(secret: str) -> bytes:
    """The key of a Standard Webhooks secret (``whsec_`` and base64 of 24 to 64 bytes), or ValueError."""
    if not secret.startswith("whsec_"):
        raise ValueError("it must start with whsec_ (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("after whsec_ it must be base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"it must hold 24 to 64 bytes of key, not {len(key)}")
    return key


class ConfigError(Exception):
    """Settings that cannot be used; ``lines`` has one sentence per problem, naming the variable."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("; ".join(lines))


def explain(error: ErrorDetails, config_file: str | None) -> str:
    """One line for one invalid setting: where it was set, the value (unless secret), what is allowed."""
    field = str(error["loc"][0]) if error["loc"] else "?"
    env = f"EFTGW_{field.upper()}"
    where = env if env in os.environ or not config_file else f"{field!r} in {config_file}"
    if error["type"] == "extra_forbidden":
        return f"{where} is not a setting eftgw knows"
    info = Settings.model_fields.get(field)
    annotation = info.annotation if info is not None else None
    secret = "SecretStr" in str(annotation)
    value = "<hidden>" if secret else repr(error.get("input"))
    value = value if len(value) <= 80 else value[:77] + "..."
    if get_origin(annotation) is Literal:
        choices = ", ".join(str(choice) for choice in get_args(annotation))
        return f"{where}={value} is not allowed; use one of: {choices}"
    reason = error["msg"].removeprefix("Value error, ").replace("Input should be", "it must be")
    return f"{where}={value} is not valid: {reason}"


# Every list setting is a CommaList: pydantic-settings would otherwise decode it as JSON before any validator
# runs, and ``EFTGW_CORS_ORIGINS=https://a.example,https://b.example`` would stop every command.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]


# The config file :meth:`Settings.load` is reading, for its sources (pydantic-settings asks the class, not the
# instance, for them); never written to the process environment.
_LOADING: ContextVar[str | None] = ContextVar("eftgw_config_file", default=None)


class Settings(BaseSettings):
    """Everything an operator can set. Names match ``EFTGW_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="EFTGW_", extra="forbid", validate_default=True)
    _config_file: Path | None = PrivateAttr(default=None)

    data_dir: Path = Path("./eftgw-data")
    host: str = "127.0.0.1"
    http_port: int = 8443
    sftp_port: int = 2222
    public_url: str | None = None
    region: Region = "us"
    database_url: str | None = None

    storage: Literal["filesystem", "s3"] = "filesystem"
    storage_dir: Path | None = None
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "eftgw"
    s3_secure: bool = True
    s3_region: str | None = None
    upload_memory: int = Field(
        default=512 * 1024 * 1024,
        ge=16 * 1024 * 1024,
        description="bytes of upload buffers (S3 parts filling and in flight) a node holds, HTTP and SFTP"
        " together; writers wait for room beyond it",
    )

    tls: Literal["on", "off"] = "on"
    tls_cert: Path | None = None
    tls_key: Path | None = None

    # Tokens: the portal signs them with Ed25519; the gateway holds public keys only, one PEM per kid in
    # ``trusted_keys_dir`` (file name = kid). The gateway's own signing key (for the CLI and the integration
    # API's launch tokens) is made in the data dir on first start and trusted too.
    token_issuer: str = "eftgw-portal"  # noqa: S105 - an issuer name, not a secret
    token_audience: str | None = None
    trusted_keys_dir: Path | None = None
    signing_key: Path | None = None
    launch_token_max_ttl: int = Field(default=300, ge=10)
    session_ttl: int = Field(default=12 * 3600, ge=60)

    # SFTP: host keys are made once in ``sftp_host_keys_dir`` (default ``<data>/ssh``); account passwords
    # are sealed with the key in ``sftp_account_key`` (default ``<data>/keys/sftp-accounts.key``). Nodes
    # that share a database must share both.
    sftp_host_keys_dir: Path | None = None
    sftp_account_key: Path | None = None
    sftp_session_check_interval: float = Field(
        default=5.0, gt=0, description="seconds between checks that cut sessions of expired accounts"
    )
    # Open files: each SFTP connection and open handle holds a descriptor. The SFTP side as a whole keeps
    # within max(RLIMIT_NOFILE - sftp_reserved_fds, RLIMIT_NOFILE // 4), leaving the rest to HTTPS.
    sftp_max_handles_per_session: int = Field(default=64, ge=1, description="open SFTP handles per session")
    sftp_max_handles_per_account: int = Field(
        default=128, ge=1, description="open SFTP handles of one account's sessions together"
    )
    sftp_reserved_fds: int = Field(
        default=512, ge=0, description="file descriptors the SFTP side leaves to HTTPS, database and storage"
    )
    sftp_write_memory: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="bytes of SFTP writes all sessions together hold in memory before they are stored;"
        " writes wait for room beyond it",
    )
    sftp_receive_memory: int = Field(
        default=32 * 1024 * 1024,
        ge=1024 * 1024,
        description="bytes SFTP clients sent that all sessions together hold before they are processed;"
        " beyond it connections stop reading their sockets until there is room (TCP backpressure)",
    )
    # Networks whose failed SFTP logins are never scored nor banned (e.g. a customer's known NAT).
    sftp_defender_allowlist: CommaList = Field(default_factory=list)

    upload_expiry: int = Field(
        default=7 * 24 * 3600, ge=60, description="idle seconds before an unfinished upload expires"
    )
    body_idle_timeout: float = Field(
        default=60.0,
        gt=0,
        description="seconds an upload request's body may bring no byte before the gateway closes the"
        " connection (what arrived is kept; the client resumes from the offset)",
    )
    max_upload_size: int | None = Field(default=None, ge=1, description="Tus-Max-Size; none means no limit")
    max_active_uploads_per_case: int = Field(
        default=1000, ge=1, description="unfinished uploads a case may hold at once; more are refused (429)"
    )
    upload_creation_rate: int = Field(
        default=120, ge=1, description="uploads one principal may create per minute, on average (429 past it)"
    )
    upload_creation_burst: int = Field(
        default=120, ge=1, description="uploads one principal may create at once before the rate applies"
    )
    cors_origins: CommaList = Field(default_factory=list)
    clock_offset: float = 0.0
    retention_interval: int = Field(default=300, ge=1)
    retention_days: int = Field(default=30, ge=1)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    node_name: str = Field(default_factory=socket.gethostname, description="this node's name in the logs")

    # Integration events (eftgw.events): pushed as Standard Webhooks to ``webhook_url`` by one elected node
    # per region; without a URL they only accumulate for the pull API.
    webhook_url: str | None = Field(
        default=None, description="where events are POSTed; none: nothing is sent"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="the Standard Webhooks signing secret, whsec_ and base64 (24 to 64 bytes)"
    )
    webhook_max_age: int = Field(
        default=72 * 3600, ge=1, description="seconds an event is retried before it becomes a dead letter"
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="seconds one delivery may take")
    webhook_concurrency: int = Field(
        default=8, ge=1, le=256, description="cases delivered to at once (the sender's connection pool)"
    )
    webhook_poll_interval: float = Field(
        default=0.2, gt=0, le=60, description="seconds between the sender's looks for due events"
    )
    webhook_retry_base: float = Field(
        default=1.0, gt=0, description="seconds: retries wait up to base * 2^attempts, jittered"
    )
    webhook_retry_max: float = Field(
        default=3600.0, gt=0, description="seconds: the longest wait between retries"
    )
    webhook_leader_ttl: float = Field(
        default=30.0, ge=1, description="seconds after the sending node dies before another takes over"
    )

    # Several nodes behind a TCP balancer: PROXY protocol v2 on the HTTPS and SFTP listeners gives each
    # connection its client's address. Only connections from ``trusted_proxies`` may (and then must) send it.
    proxy_protocol: Literal["on", "off"] = "off"
    trusted_proxies: CommaList = Field(default_factory=list)

    @field_validator("sftp_defender_allowlist", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network; use CIDRs such as 10.0.0.0/24") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_for_proxy_protocol(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("proxy_protocol") == "on" and not value:
            raise ValueError("EFTGW_PROXY_PROTOCOL=on needs the balancers' addresses here (CIDRs)")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("it must be an http:// or https:// URL")
        return value.strip()

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            if info.data.get("webhook_url"):
                raise ValueError("EFTGW_WEBHOOK_URL is set, so a signing secret (whsec_...) is needed")
            return None
        webhook_secret_bytes(value.get_secret_value())
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _LOADING.get() or os.environ.get("EFTGW_CONFIG")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None) -> Settings:
        """Read the settings; a config file given here wins over ``EFTGW_CONFIG``.

        :raises ConfigError: naming each bad setting (or the unreadable file) in one line.
        """
        toml_file = str(config_file) if config_file is not None else os.environ.get("EFTGW_CONFIG") or None
        if toml_file is not None and not Path(toml_file).is_file():
            raise ConfigError([f"config file {toml_file} does not exist"])
        loading = _LOADING.set(toml_file)
        try:
            settings = cls()
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config file {toml_file} is not valid TOML: {exc}"]) from exc
        except ValidationError as exc:
            raise ConfigError([explain(error, toml_file) for error in exc.errors(include_url=False)]) from exc
        finally:
            _LOADING.reset(loading)
        settings._config_file = Path(toml_file).resolve() if toml_file else None
        return settings

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from (absolute), if any."""
        return self._config_file

    # Derived values -----------------------------------------------------------------------------------

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.resolved_data_dir / 'eftgw.sqlite3'}"

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.resolved_data_dir / "objects").expanduser().resolve()

    @property
    def audience(self) -> str:
        return self.token_audience or f"eftgw-{self.region}"

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls == "on" else "http"
        return f"{scheme}://{self.host}:{self.http_port}"

    @property
    def sftp_public_host(self) -> str:
        """The host customers put in their SFTP client: the public URL's host, else the listen address."""
        host = urllib.parse.urlsplit(self.public_url).hostname if self.public_url else None
        return host or self.host

    def describe(self) -> dict[str, Any]:
        """The effective settings as plain values, secrets masked."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out
