"""Quotas on creating uploads: a token bucket per principal (a rate with a burst), kept in memory per node.

The bucket of a principal holds up to ``burst`` tokens and refills at ``per_minute / 60`` tokens a second;
each upload created takes one. An empty bucket answers :class:`TooManyRequests` with the seconds until the
next token. The buckets of at most ``max_principals`` principals are kept (the least recently used are
forgotten, which only ever gives a principal a full bucket back), so memory stays bounded.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from eftgw.errors import TooManyRequests
from eftgw.model import Principal

PrincipalKey = tuple[str, str, str | None]


def principal_key(principal: Principal) -> PrincipalKey:
    """Who a quota counts: the role, the user and the case the principal is bound to."""
    return (principal.role.value, principal.user, principal.case_id)


class CreationRate:
    """A token bucket per principal."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        now: Callable[[], float] = time.monotonic,
        max_principals: int = 10_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.now = now
        self.max_principals = max_principals
        self._buckets: collections.OrderedDict[PrincipalKey, tuple[float, float]] = collections.OrderedDict()

    def take(self, principal: Principal) -> None:
        """Take one token for ``principal``, or raise :class:`TooManyRequests` (nothing taken)."""
        key = principal_key(principal)
        now = self.now()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._remember(key, tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise TooManyRequests(
                f"Too many uploads started in a short time (at most {self.burst:.0f} at once and "
                f"{self.rate * 60:.0f} a minute); try again in {wait} seconds.",
                retry_after=wait,
            )
        self._remember(key, tokens - 1.0, now)

    def _remember(self, key: PrincipalKey, tokens: float, at: float) -> None:
        self._buckets[key] = (tokens, at)
        while len(self._buckets) > self.max_principals:
            self._buckets.popitem(last=False)
