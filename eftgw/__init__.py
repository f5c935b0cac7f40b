"""eftgw: a resumable, secure file-transfer gateway for customer-support cases.

The package is laid out in layers (see ``shared/DESIGN.md``):

- the core, at the top level: domain model (:mod:`eftgw.model`), errors (:mod:`eftgw.errors`), the
  services that act on cases, uploads and files, authentication of principals, audit and the clock;
- :mod:`eftgw.storage`: where bytes live (object keys ``cases/<case>/<file-id>``, in-progress uploads under
  ``uploads/<case>/<upload-id>``);
- :mod:`eftgw.metadata`: the SQL repository (cases, files, uploads, sessions, audit events) with migrations;
- transports: :mod:`eftgw.http` (tus 1.0, files API, launch flow) and :mod:`eftgw.sftp`;
- :mod:`eftgw.retention`: the purge policy and the worker applying it.
"""

__version__ = "0.1.0"
