"""Metadata: one repository interface over SQL (SQLite embedded, PostgreSQL for several nodes).

:class:`~eftgw.metadata.repository.SqlRepository` is the only implementation; the core sees it through the
:class:`Repository` protocol. The schema is described in :mod:`eftgw.metadata.schema`.
"""

from eftgw.metadata.repository import Repository, SqlRepository

__all__ = ["Repository", "SqlRepository"]
