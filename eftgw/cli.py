"""The ``eftgw`` command: ``serve`` and the operators' admin commands (same configuration as ``serve``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from eftgw.clock import Clock, FixedClock, isoformat, parse_instant
from eftgw.config import ConfigError, Settings
from eftgw.errors import BadRequest, DomainError
from eftgw.events import Delivery
from eftgw.gateway import Gateway
from eftgw.logs import configure_logging, use_json
from eftgw.model import Principal, Role, Via

OPERATOR = Principal(user="operator", role=Role.SERVICE, via=Via.CLI)


async def with_gateway(
    settings: Settings, action: Callable[[Gateway], Awaitable[int]], clock: Clock | None = None
) -> int:
    gateway = Gateway.build(settings, clock)
    await gateway.start()
    try:
        return await action(gateway)
    finally:
        await gateway.close()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from eftgw.server import serve

    asyncio.run(serve(settings))
    return 0


def cmd_case(settings: Settings, args: argparse.Namespace) -> int:
    async def action(gw: Gateway) -> int:
        if args.action == "open":
            case = await gw.cases.open(OPERATOR, args.case_id)
        elif args.action == "close":
            at = parse_instant(args.at) if args.at else None
            case = await gw.cases.close(OPERATOR, args.case_id, at)
        elif args.action == "reopen":
            case = await gw.cases.reopen(OPERATOR, args.case_id)
        else:
            case = await gw.cases.get(args.case_id)
        print(json.dumps(gw.cases.view_of(case).as_json()))
        return 0

    return asyncio.run(with_gateway(settings, action))


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    gateway = Gateway.build(settings)
    role = Role(args.role)
    case_id = args.case_id if args.case_id != "-" else None
    typ = "launch" if args.launch else "access"
    ttl = args.ttl if args.ttl is not None else (120 if args.launch else 3600)
    print(gateway.signer.mint(role=role, user=args.user or role.value, case_id=case_id, ttl=ttl, typ=typ))
    return 0


def cmd_launch(settings: Settings, args: argparse.Namespace) -> int:
    """Mint a one-time launch token, as the portal does, and print the page's URL with it in the fragment."""
    ttl = args.ttl if args.ttl is not None else settings.launch_token_max_ttl
    if not 10 <= ttl <= settings.launch_token_max_ttl:
        raise BadRequest(f"--ttl must be between 10 and {settings.launch_token_max_ttl} seconds.")

    async def action(gw: Gateway) -> int:
        await gw.cases.get(args.case_id)
        role = Role(args.role)
        user = args.user or role.value
        token = gw.signer.mint(role=role, user=user, case_id=args.case_id, ttl=ttl, typ="launch")
        print(f"{settings.resolved_public_url}/launch#{token}")
        return 0

    return asyncio.run(with_gateway(settings, action))


def cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from eftgw.retention.worker import sweep

    clock = FixedClock(parse_instant(args.now)) if args.now else None

    async def action(gw: Gateway) -> int:
        result = await sweep(gw.retention, dry_run=args.dry_run)
        if args.json:
            print(json.dumps(result.as_json(), indent=2))
        else:
            verb = "would purge" if args.dry_run else "purged"
            cases = result.due if args.dry_run else result.purged
            print(f"retention as of {result.now}: {verb} {len(cases)} case(s)")
            for item in result.purged:
                print(f"  {item.case_id}: {len(item.files)} files, {item.bytes} bytes")
            for due in result.due if args.dry_run else []:
                print(f"  {due.case_id}: closed {isoformat(due.closed_at)}, due {isoformat(due.due_at)}")
            for case_id, reason in result.failed.items():
                print(f"  {case_id}: FAILED ({reason}); will be retried")
            if not args.dry_run:
                print(f"  expired unfinished uploads removed: {result.expired_uploads}")
        return 1 if result.failed else 0

    return asyncio.run(with_gateway(settings, action, clock))


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    async def action(gw: Gateway) -> int:
        for event in await gw.repo.list_audit(args.case, args.limit):
            fields = dataclasses.asdict(event)
            del fields["id"]
            print(json.dumps({**fields, "at": isoformat(event.at)}))
        return 0

    return asyncio.run(with_gateway(settings, action))


def cmd_orphans(settings: Settings, args: argparse.Namespace) -> int:
    from eftgw.orphans import sweep_orphans

    async def action(gw: Gateway) -> int:
        grace = dt.timedelta(seconds=args.grace)
        removed = await sweep_orphans(gw.repo, gw.store, gw.clock.now(), grace)
        print(json.dumps({"removed": removed}))
        return 0

    return asyncio.run(with_gateway(settings, action))


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Re-hash stored files against their recorded SHA-256; exit 1 if one is damaged, missing or unread."""
    from eftgw.scrub import scrub

    async def action(gw: Gateway) -> int:
        if args.case is not None:
            await gw.cases.get(args.case)  # CaseNotFound for a case this gateway does not know
        report = await scrub(gw.repo, gw.store, args.case)
        print(json.dumps(report.as_json(), indent=2))
        return 0 if report.ok else 1

    return asyncio.run(with_gateway(settings, action))


def cmd_sftp_account(settings: Settings, args: argparse.Namespace) -> int:
    async def action(gw: Gateway) -> int:
        if args.action == "create":
            keys = [_read_key(k) for k in args.authorized_key or []]
            issued = await gw.accounts.create(OPERATOR, args.target, authorized_keys=keys)
            print(json.dumps(gw.accounts.view(issued.account, issued.password)))
        elif args.action == "show":
            issued = await gw.accounts.show(OPERATOR, args.target)
            print(json.dumps(gw.accounts.view(issued.account, issued.password)))
        elif args.action == "list":
            accounts = await gw.accounts.list_accounts(OPERATOR, args.target)
            print(json.dumps([gw.accounts.view(a) for a in accounts]))
        else:
            print(json.dumps(gw.accounts.view(await gw.accounts.revoke(OPERATOR, args.target))))
        return 0

    if args.action != "list" and not args.target:
        wanted = "CASE_ID" if args.action == "create" else "USERNAME"
        raise DomainError(f"sftp-account {args.action} needs a {wanted}.")
    return asyncio.run(with_gateway(settings, action))


def delivery_json(delivery: Delivery) -> dict[str, object]:
    """One line of ``eftgw events list``: the event as receivers get it, and its delivery state."""

    def at(value: dt.datetime | None) -> str | None:
        return isoformat(value) if value is not None else None

    return {
        "seq": delivery.event.seq,
        **delivery.event.as_json(),
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": at(delivery.next_attempt_at) if delivery.state == "pending" else None,
        "delivered_at": at(delivery.delivered_at),
        "dead_at": at(delivery.dead_at),
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
    }


def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    """List the outbox's events with their delivery state, or make dead letters pending again."""
    if args.action == "list" and (args.event_ids or args.all_dead):
        raise DomainError("events list takes no EVENT_ID nor --all-dead (see: events replay).")
    if args.action == "replay" and bool(args.event_ids) == bool(args.all_dead):
        raise DomainError("events replay needs EVENT_ID... or --all-dead (not both).")

    async def action(gw: Gateway) -> int:
        if args.action == "list":
            for delivery in await gw.repo.list_deliveries(args.state, args.after, args.limit):
                print(json.dumps(delivery_json(delivery)))
            return 0
        ids = None if args.all_dead else list(dict.fromkeys(args.event_ids))
        replayed = await gw.repo.replay(ids, gw.clock.now())
        print(json.dumps({"replayed": replayed}))
        if ids is not None and replayed < len(ids):
            print(f"eftgw: {len(ids) - replayed} of the given events are not dead letters", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(with_gateway(settings, action))


def _read_key(value: str) -> str:
    """An authorized key given inline, or as ``@FILE`` (e.g. ``@~/.ssh/id_ed25519.pub``)."""
    if value.startswith("@"):
        return Path(value[1:]).expanduser().read_text(encoding="utf-8")
    return value


TEN_YEARS = 10 * 366 * 24 * 3600


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (else argparse's one-line error)."""

    def parse(raw: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,20}", raw.strip(), re.ASCII):
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number")
        value = int(raw)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eftgw", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (EFTGW_* environment variables override it)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run HTTPS, SFTP and the background workers")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("case", help="open, close, reopen or show a case")
    p.add_argument("action", choices=["open", "close", "reopen", "show"])
    p.add_argument("case_id")
    p.add_argument("--at", help="with close: the ISO 8601 time the case closed (default: now)")
    p.set_defaults(func=cmd_case)

    p = sub.add_parser("token", help="print a token signed with the gateway's issuer key")
    p.add_argument("case_id", help="the case the token is bound to ('-' for none: engineer or service)")
    p.add_argument("--role", choices=[r.value for r in Role], required=True)
    p.add_argument("--user")
    p.add_argument("--ttl", type=bounded(1, TEN_YEARS), help="seconds (default 3600, or 120 with --launch)")
    p.add_argument("--launch", action="store_true", help="a one-time launch token for /launch")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("launch", help="print a ready /launch#... URL that opens the case in a browser")
    p.add_argument("case_id")
    p.add_argument("--user", help="who the page says is uploading (default: the role)")
    p.add_argument("--role", choices=["customer", "engineer"], default="customer")
    p.add_argument(
        "--ttl", type=bounded(1, TEN_YEARS), help="seconds the link works (default: the maximum, 300)"
    )
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("retention", help="apply the retention rules once")
    p.add_argument("action", choices=["run"])
    p.add_argument("--now", help="ISO 8601 time to evaluate the rules at (default: now)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be purged")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_retention)

    p = sub.add_parser("orphans", help="remove stored data no upload knows (e.g. after a crash)")
    p.add_argument("action", choices=["sweep"])
    p.add_argument(
        "--grace",
        type=bounded(0, TEN_YEARS),
        default=3600,
        help="leave anything touched this many seconds ago",
    )
    p.set_defaults(func=cmd_orphans)

    p = sub.add_parser("audit", help="print audit events as JSON lines, oldest first")
    p.add_argument("action", choices=["list"])
    p.add_argument("--case", help="only this case's events")
    p.add_argument("--limit", type=bounded(1, 1_000_000), default=1000)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("verify", help="re-hash stored files against their SHA-256; print a JSON report")
    p.add_argument("--case", help="only this case's files (default: every case)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sftp-account", help="create, show, list or revoke temporary SFTP accounts")
    p.add_argument("action", choices=["create", "show", "list", "revoke"])
    p.add_argument("target", nargs="?", help="create: CASE_ID; show, revoke: USERNAME; list: [CASE_ID]")
    p.add_argument("--authorized-key", action="append", help="with create: an OpenSSH public key or @FILE")
    p.set_defaults(func=cmd_sftp_account)

    p = sub.add_parser("events", help="list integration events and their delivery; replay dead letters")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument(
        "event_ids", nargs="*", metavar="EVENT_ID", help="with replay: the dead events to send again"
    )
    p.add_argument("--all-dead", action="store_true", help="with replay: every dead letter")
    p.add_argument(
        "--state", choices=["pending", "delivered", "dead"], help="with list: only events in this state"
    )
    p.add_argument("--after", type=bounded(0, 2**62), default=0, help="with list: events after this seq")
    p.add_argument("--limit", type=bounded(1, 1_000_000), default=1000)
    p.set_defaults(func=cmd_events)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args.config)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"eftgw: {line}", file=sys.stderr)
        return 2
    # Admin commands print their result on stdout; only warnings go to the log unless serving.
    level = settings.log_level.upper() if args.command == "serve" else "WARNING"
    configure_logging(level)
    if settings.log_format == "json":
        use_json(settings.node_name, settings.region)
    try:
        return int(args.func(settings, args))
    except DomainError as exc:
        print(f"eftgw: {exc.message}", file=sys.stderr)
        return 2
