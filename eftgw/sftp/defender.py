"""Scoring of failed logins per account and per source address, with temporary bans.

Every failed login counts three times, within a sliding ``window``:

- against the **pair** (address, account name): ``threshold`` failures ban that account from that address.
  The one guessing a password is stopped; other customers behind the same address (a NAT) are not;
- against the **address**, whatever the accounts: ``address_threshold`` failures (someone trying many names)
  ban the address, except for the accounts that logged in from it before (``trust_time``): a customer behind
  a NAT who has logged in keeps working while someone else at that address is banned;
- against the **account**, whatever the addresses: ``account_threshold`` failures (a guess spread over many
  addresses) ban the account from every address it has not logged in from.

A successful login forgives only the failures of that account from that address (one's own typos), never
failures against other accounts. Bans last ``ban_time`` seconds, each new ban of the same pair, address or
account ``ban_growth`` times longer, up to ``max_ban``. Addresses in ``allowlist`` (networks) are never
scored nor banned. Unknown account names are scored exactly as real ones, so bans do not tell which exist.

Memory is bounded: at most ``max_entries`` addresses and as many account names are tracked (the quietest
forgotten first), and per address at most ``max_per_host`` accounts.

Addresses are strings (as the transport reports them; PROXY protocol may later report the client's own);
anything that is not an IP address is scored as given and never matches the allowlist.
"""

from __future__ import annotations

import collections
import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from eftgw.clock import Clock

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class _Score:
    """Failures of one pair, address or account within the window, and its ban."""

    failures: collections.deque[tuple[dt.datetime, str]] = field(default_factory=collections.deque)
    banned_until: dt.datetime | None = None
    bans: int = 0

    def banned(self, now: dt.datetime) -> bool:
        if self.banned_until is not None and now >= self.banned_until:
            self.banned_until = None
        return self.banned_until is not None

    def prune(self, now: dt.datetime, window: dt.timedelta) -> None:
        while self.failures and self.failures[0][0] <= now - window:
            self.failures.popleft()


@dataclass
class _Host:
    score: _Score = field(default_factory=_Score)
    pairs: collections.OrderedDict[str, _Score] = field(default_factory=collections.OrderedDict)
    known: collections.OrderedDict[str, dt.datetime] = field(default_factory=collections.OrderedDict)


class LoginDefender:
    def __init__(
        self,
        clock: Clock,
        *,
        threshold: int = 10,
        address_threshold: int = 20,
        account_threshold: int = 50,
        window: float = 600.0,
        ban_time: float = 900.0,
        ban_growth: float = 2.0,
        max_ban: float = 86400.0,
        trust_time: float = 120 * 3600.0,
        allowlist: Iterable[str | Network] = (),
        max_entries: int = 50_000,
        max_per_host: int = 256,
    ) -> None:
        self.clock = clock
        self.threshold = threshold
        self.address_threshold = address_threshold
        self.account_threshold = account_threshold
        self.window = dt.timedelta(seconds=window)
        self.ban_time = ban_time
        self.ban_growth = ban_growth
        self.max_ban = max_ban
        self.trust_time = dt.timedelta(seconds=trust_time)
        self.allowlist = [ipaddress.ip_network(n, strict=False) for n in allowlist]
        self.max_entries = max_entries
        self.max_per_host = max_per_host
        self._hosts: collections.OrderedDict[str, _Host] = collections.OrderedDict()
        self._accounts: collections.OrderedDict[str, _Score] = collections.OrderedDict()

    # questions -----------------------------------------------------------------------------------

    def allowlisted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allowlist)

    def closes(self, address: str) -> bool:
        """Whether a new connection from ``address`` is closed at once: the address is banned and no account
        has logged in from it (for those, the login decides, see :meth:`refuses`)."""
        host = self._hosts.get(address)
        if host is None or self.allowlisted(address) or not host.score.banned(self.clock.now()):
            return False
        return not self._known_accounts(host)

    def refuses(self, address: str, account: str) -> bool:
        """Whether a login to ``account`` from ``address`` is refused without checking its credentials."""
        if self.allowlisted(address):
            return False
        now = self.clock.now()
        host = self._hosts.get(address)
        pair = host.pairs.get(account) if host is not None else None
        if pair is not None and pair.banned(now):
            return True
        known = host is not None and self._is_known(host, account, now)
        if host is not None and host.score.banned(now) and not known:
            return True
        score = self._accounts.get(account)
        return score is not None and score.banned(now) and not known

    def banned_until(self, address: str) -> dt.datetime | None:
        """When the address-wide ban of ``address`` ends (``None`` if there is none)."""
        host = self._hosts.get(address)
        if host is None or not host.score.banned(self.clock.now()):
            return None
        return host.score.banned_until

    # scoring -------------------------------------------------------------------------------------

    def record_failure(self, address: str, account: str) -> bool:
        """Score one failed login; ``True`` if logins to ``account`` from ``address`` are refused now."""
        if self.allowlisted(address):
            return False
        now = self.clock.now()
        host = self._host(address)
        pair = host.pairs.pop(account, None) or _Score()
        host.pairs[account] = pair
        while len(host.pairs) > self.max_per_host:
            host.pairs.popitem(last=False)
        self._add(pair, now, account, self.threshold)
        self._add(host.score, now, account, self.address_threshold)
        self._add(self._account(account), now, account, self.account_threshold)
        return self.refuses(address, account)

    def record_success(self, address: str, account: str) -> None:
        """A login to ``account`` from ``address`` succeeded: its own failures from there are forgiven (not a
        ban in force, nor failures against other accounts) and the account is known at that address."""
        if self.allowlisted(address):
            return
        now = self.clock.now()
        host = self._host(address)
        pair = host.pairs.get(account)
        if pair is not None:
            pair.failures.clear()
        remaining = [(when, name) for when, name in host.score.failures if name != account]
        host.score.failures = collections.deque(remaining)
        host.known.pop(account, None)
        host.known[account] = now + self.trust_time
        while len(host.known) > self.max_per_host:
            host.known.popitem(last=False)

    # helpers -------------------------------------------------------------------------------------

    def _add(self, score: _Score, now: dt.datetime, account: str, threshold: int) -> None:
        score.failures.append((now, account))
        score.prune(now, self.window)
        if len(score.failures) >= threshold and not score.banned(now):
            seconds = min(self.ban_time * self.ban_growth**score.bans, self.max_ban)
            score.banned_until = now + dt.timedelta(seconds=seconds)
            score.bans += 1
            score.failures.clear()

    def _is_known(self, host: _Host, account: str, now: dt.datetime) -> bool:
        until = host.known.get(account)
        if until is not None and now >= until:
            del host.known[account]
            return False
        return until is not None

    def _known_accounts(self, host: _Host) -> list[str]:
        now = self.clock.now()
        return [name for name in list(host.known) if self._is_known(host, name, now)]

    def _host(self, address: str) -> _Host:
        host = self._hosts.pop(address, None) or _Host()
        self._hosts[address] = host
        while len(self._hosts) > self.max_entries:
            self._hosts.popitem(last=False)
        return host

    def _account(self, account: str) -> _Score:
        score = self._accounts.pop(account, None) or _Score()
        self._accounts[account] = score
        while len(self._accounts) > self.max_entries:
            self._accounts.popitem(last=False)
        return score
