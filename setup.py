"""Packaging hook: the wheel carries the built browser client as package data (``eftgw/web_client/``).

Everything else about the package is in ``pyproject.toml``. ``scripts/build-web-client`` builds the client
into ``web-client/dist`` first; a wheel built without it would serve ``/launch`` as 503, so the build stops.
Editable installs (the development venv) serve ``web-client/dist`` of the checkout instead and skip this.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DIST = ROOT / "web-client" / "dist"


class build_py_with_web_client(build_py):  # noqa: N801 - setuptools command naming
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not (DIST / "index.html").is_file():
            raise SystemExit("web-client/dist is not built: run scripts/build-web-client before building eftgw")
        target = Path(self.build_lib) / "eftgw" / "web_client"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(DIST, target, ignore=shutil.ignore_patterns(".build-stamp"))


setup(cmdclass={"build_py": build_py_with_web_client})
