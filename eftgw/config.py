"""Typed settings, read once: defaults, then a TOML file (``--config``), then ``EFTGW_*`` variables.

Secrets are :class:`pydantic.SecretStr` so they never show in ``repr`` or logs; :meth:`Settings.describe`
prints the effective configuration with secrets masked.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Region = Literal["us", "emea", "apac"]


class Settings(BaseSettings):
    """Everything an operator can set. Names match ``EFTGW_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="EFTGW_", extra="forbid", validate_default=True)

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

    upload_expiry: int = Field(
        default=7 * 24 * 3600, ge=60, description="idle seconds before an unfinished upload expires"
    )
    max_upload_size: int | None = Field(default=None, ge=1, description="Tus-Max-Size; none means no limit")
    cors_origins: list[str] = Field(default_factory=list)
    clock_offset: float = 0.0
    retention_interval: int = Field(default=300, ge=1)
    retention_days: int = Field(default=30, ge=1)
    log_level: str = "INFO"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
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
        toml_file = os.environ.get("EFTGW_CONFIG")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None) -> Settings:
        """Read the settings; a config file given here wins over ``EFTGW_CONFIG``."""
        if config_file is not None:
            os.environ["EFTGW_CONFIG"] = str(config_file)
        return cls()

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
