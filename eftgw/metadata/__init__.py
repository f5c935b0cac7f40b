"""Metadata: one repository interface over SQL (SQLite embedded, PostgreSQL for several nodes).

:class:`~eftgw.metadata.repository.SqlRepository` is the only implementation of the core's ports
(:mod:`eftgw.ports`); each service sees it only through the port it needs. The schema is described in
:mod:`eftgw.metadata.schema`.
"""

from eftgw.metadata.repository import SqlRepository

__all__ = ["SqlRepository"]
