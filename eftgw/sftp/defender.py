"""Scoring of failed logins per source address, with temporary bans (after sftpgo's defender).

Every failed login adds to its address's score; scores decay after ``window`` seconds. An address whose score
reaches ``threshold`` is banned for ``ban_time`` seconds, and each new ban of the same address lasts
``ban_growth`` times longer, up to ``max_ban``. A banned address's connections are closed before they can
try a password. The same score is given whatever the username, so bans do not tell which usernames exist.

Memory is bounded: at most ``max_hosts`` addresses are tracked; the entries that were quiet longest are
forgotten first.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field

from eftgw.clock import Clock


@dataclass
class _Host:
    failures: collections.deque[dt.datetime] = field(default_factory=collections.deque)
    banned_until: dt.datetime | None = None
    bans: int = 0
    last_seen: dt.datetime | None = None


class LoginDefender:
    def __init__(
        self,
        clock: Clock,
        *,
        threshold: int = 10,
        window: float = 600.0,
        ban_time: float = 900.0,
        ban_growth: float = 2.0,
        max_ban: float = 86400.0,
        max_hosts: int = 50_000,
    ) -> None:
        self.clock = clock
        self.threshold = threshold
        self.window = dt.timedelta(seconds=window)
        self.ban_time = ban_time
        self.ban_growth = ban_growth
        self.max_ban = max_ban
        self.max_hosts = max_hosts
        self._hosts: collections.OrderedDict[str, _Host] = collections.OrderedDict()

    def is_banned(self, address: str) -> bool:
        host = self._hosts.get(address)
        if host is None or host.banned_until is None:
            return False
        if self.clock.now() >= host.banned_until:
            host.banned_until = None
            return False
        return True

    def banned_until(self, address: str) -> dt.datetime | None:
        return self._hosts[address].banned_until if self.is_banned(address) else None

    def record_failure(self, address: str) -> bool:
        """Score one failed login; return ``True`` if the address is banned now."""
        now = self.clock.now()
        host = self._touch(address, now)
        host.failures.append(now)
        while host.failures and host.failures[0] <= now - self.window:
            host.failures.popleft()
        if len(host.failures) >= self.threshold and not self.is_banned(address):
            seconds = min(self.ban_time * self.ban_growth**host.bans, self.max_ban)
            host.banned_until = now + dt.timedelta(seconds=seconds)
            host.bans += 1
            host.failures.clear()
        return self.is_banned(address)

    def record_success(self, address: str) -> None:
        """A successful login clears the address's failures (not a ban in force)."""
        host = self._hosts.get(address)
        if host is not None:
            host.failures.clear()

    def _touch(self, address: str, now: dt.datetime) -> _Host:
        host = self._hosts.pop(address, None) or _Host()
        host.last_seen = now
        self._hosts[address] = host
        while len(self._hosts) > self.max_hosts:
            self._hosts.popitem(last=False)
        return host
