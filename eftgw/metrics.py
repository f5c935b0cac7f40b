"""Prometheus metrics for operators, served at ``/metrics`` (counts and ages only; no case data)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

UPLOADED_BYTES = Counter(
    "eftgw_upload_bytes", "Bytes acknowledged to uploaders (durable)", ["via"], registry=REGISTRY
)
UPLOADS_COMPLETED = Counter(
    "eftgw_uploads_completed", "Uploads completed into files", ["via"], registry=REGISTRY
)
CHECKSUM_FAILURES = Counter(
    "eftgw_checksum_failures", "Chunks discarded for a checksum mismatch", registry=REGISTRY
)
DIGEST_REREAD_BYTES = Counter(
    "eftgw_digest_reread_bytes",
    "Stored bytes read back to compute whole-file digests (an upload continued without a usable saved state, "
    "or a tus concatenation)",
    registry=REGISTRY,
)
HTTP_BODY_STALLS = Counter(
    "eftgw_http_body_stalls",
    "Upload bodies whose connection was closed because they brought no byte for EFTGW_BODY_IDLE_TIMEOUT "
    "seconds (what arrived was kept)",
    registry=REGISTRY,
)
HTTP_BODIES = Counter(
    "eftgw_http_upload_bodies",
    "Upload bodies over HTTP(S) by how they were received: 'blocks' (by the connection straight into the "
    "upload pipeline's blocks) or 'chunks' (through aiohttp), with the reason for chunks",
    ["path", "reason"],
    registry=REGISTRY,
)
DOWNLOADED_BYTES = Counter("eftgw_download_bytes", "Bytes sent to downloaders", registry=REGISTRY)
INTEGRITY_FAILURES = Counter(
    "eftgw_integrity_failures",
    "Stored files found damaged (bytes not matching the recorded SHA-256) or missing, by who found it",
    ["found_by"],
    registry=REGISTRY,
)
PURGED_CASES = Counter("eftgw_retention_purged_cases", "Cases purged by retention", registry=REGISTRY)
PURGED_FILES = Counter("eftgw_retention_purged_files", "Files purged by retention", registry=REGISTRY)
PURGED_BYTES = Counter("eftgw_retention_purged_bytes", "Bytes purged by retention", registry=REGISTRY)
PURGE_FAILURES = Counter(
    "eftgw_retention_failures", "Purges that failed (retried next sweep)", registry=REGISTRY
)
OLDEST_OVERDUE = Gauge(
    "eftgw_retention_oldest_overdue_seconds",
    "How long the most overdue purge has been waiting (0 when none is due)",
    registry=REGISTRY,
)

EVENTS_PENDING = Gauge(
    "eftgw_events_pending",
    "Integration events in the outbox not yet delivered nor dead (the outbox depth)",
    registry=REGISTRY,
)
EVENTS_OLDEST_PENDING = Gauge(
    "eftgw_events_oldest_pending_seconds",
    "Age of the oldest undelivered event (0 when none is pending)",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "eftgw_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retry (failed, tried again later) or dead (failed, too"
    " old)",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_FAILURES = Counter(
    "eftgw_webhook_failures",
    "Failed webhook attempts by reason: status_4xx, status_5xx, status_other, timeout, connection",
    ["reason"],
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
