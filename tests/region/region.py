"""A production region on loopback, started the way an operator would start it.

- the wheel that ``python -m build --wheel`` makes from this checkout (with the built web client), installed
  with pip into a fresh venv outside the checkout;
- the shared secrets made by ``deploy/make-secrets.sh`` (run on a copy: nothing is written to the checkout);
- two nodes, ``gateway1`` and ``gateway2``: that venv's ``eftgw serve``, each in its own directory, with PROXY
  protocol on, JSON logs, one PostgreSQL database and one S3 bucket (``EFTGW_TEST_*``; missing means failure);
- Debian's HAProxy running ``deploy/haproxy.cfg`` itself, only its addresses and ports replaced.

Tests talk to the balancer only. They learn which node served what from the nodes' JSON logs, and what
HAProxy decided from its own log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.services import fresh_bucket, fresh_database
from tests.support import ServerProcess, free_ports, listening

ROOT = Path(__file__).resolve().parents[2]
HAPROXY = "/usr/sbin/haproxy"
NODES = ("gateway1", "gateway2")
TRUSTED_PROXY = "127.0.0.1/32"  # HAProxy connects to the nodes from 127.0.0.1


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def build_wheel(out: Path) -> Path:
    """The wheel of this checkout, as ``python -m build --wheel`` makes it (the client must be built)."""
    if not (ROOT / "web-client" / "dist" / "index.html").is_file():
        pytest.fail("web-client/dist is not built: run scripts/build-web-client")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"python -m build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch directory
    (wheel,) = out.glob("eftgw-*.whl")
    return wheel


def install_wheel(wheel: Path, target: Path) -> Path:
    """A fresh venv with the wheel and its pinned dependencies; returns its ``eftgw`` command.

    The venv is made without a pip of its own (ensurepip takes 5 s): this environment's pip installs into it
    (``pip --python``), resolving the wheel's dependencies just the same."""
    venv.EnvBuilder(with_pip=False, clear=True).create(target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(target / "bin" / "python"),
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(f"pip install of the wheel failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return target / "bin" / "eftgw"


def make_secrets(directory: Path) -> Path:
    """Run ``deploy/make-secrets.sh`` on a copy in ``directory``; returns its ``secrets/`` directory."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "make-secrets.sh"
    shutil.copy(ROOT / "deploy" / "make-secrets.sh", script)
    subprocess.run(["bash", str(script), "localhost"], check=True, capture_output=True, timeout=120)
    return directory / "secrets"


def haproxy_config(ports: dict[str, int]) -> str:
    """``deploy/haproxy.cfg`` with its addresses and ports, and nothing else, replaced."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    replacements = {
        "bind :443": f"bind 127.0.0.1:{ports['https']}",
        "bind :22": f"bind 127.0.0.1:{ports['sftp']}",
    }
    for name in NODES:
        replacements[f"{name}:8443"] = f"127.0.0.1:{ports[name + '-http']}"
        replacements[f"{name}:2222"] = f"127.0.0.1:{ports[name + '-sftp']}"
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/haproxy.cfg no longer has exactly one {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class Node(ServerProcess):
    """One ``eftgw serve`` from the installed wheel, run from its own directory outside the checkout."""

    name: str
    eftgw: Path
    directory: Path
    env: dict[str, str]
    http_port: int
    sftp_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    stop_grace = 20.0

    @property
    def log_path(self) -> Path:  # ServerProcess declares it; here it follows the node's directory
        return self.directory / "eftgw.log"

    def start(self, timeout: float = 60) -> None:
        """Start the node; return once its log says it serves (one more start banner than before)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        before = self.started_lines()
        self.starts += 1
        self.launch(
            [str(self.eftgw), "serve"],
            self.env,
            lambda: self.started_lines() > before,
            timeout=timeout,
            what=self.name,
            cwd=self.directory,
        )

    def started_lines(self) -> int:
        return sum(
            1 for line in self.lines() if line["event"].startswith("eftgw ") and "gateway:" in line["event"]
        )

    def lines(self) -> list[dict[str, Any]]:
        """The node's log: every line must be one JSON object (EFTGW_LOG_FORMAT=json)."""
        if not self.log_path.exists():
            return []
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.strip():
                try:
                    out.append(json.loads(raw))
                except json.JSONDecodeError as exc:
                    raise AssertionError(f"{self.name} wrote a line that is not JSON: {raw[:300]!r}") from exc
        return out

    def cli(self, *args: str) -> str:
        """An admin command of the installed package, with this node's settings."""
        result = subprocess.run(
            [str(self.eftgw), *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@dataclass
class Region:
    nodes: dict[str, Node]
    https_port: int
    sftp_port: int
    haproxy_log: Path
    haproxy: subprocess.Popen[bytes] | None = None
    base: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def any_node(self) -> Node:
        return (
            next(n for n in self.nodes.values() if n.running)
            if self.running_nodes()
            else self.nodes["gateway1"]
        )

    def running_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    def haproxy_lines(self) -> list[str]:
        return self.haproxy_log.read_text(errors="replace").splitlines() if self.haproxy_log.exists() else []

    def server_states(self, name: str) -> dict[str, str]:
        """What HAProxy last logged of node ``name`` per backend (``UP`` or ``DOWN``; ``UP`` if nothing)."""
        states = {"gateways_https": "UP", "gateways_sftp": "UP"}
        for line in self.haproxy_lines():
            for backend in states:
                for state in ("UP", "DOWN"):
                    if f"{backend}/{name} is {state}" in line:
                        states[backend] = state
        return states

    def wait_state(self, name: str, state: str, timeout: float = 60) -> None:
        """Wait until HAProxy has marked node ``name`` ``state`` in both backends."""
        wait_until(
            lambda: set(self.server_states(name).values()) == {state},
            timeout,
            f"HAProxy to mark {name} {state}",
        )

    def restart(self, name: str) -> None:
        """Start a killed node again; if HAProxy had marked it down, wait until it is marked up."""
        self.nodes[name].start()
        self.wait_state(name, "UP")

    def served(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, int]:
        """How many log lines matching ``predicate`` each node wrote."""
        return {name: sum(1 for line in node.lines() if predicate(line)) for name, node in self.nodes.items()}


def start_region(base: Path, eftgw: Path) -> Region:
    secrets = make_secrets(base / "deploy")
    keys = ["https", "sftp"] + [f"{name}-{kind}" for name in NODES for kind in ("http", "sftp")]
    ports = dict(zip(keys, free_ports(len(keys)), strict=True))  # all different
    shared = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "LANG": "C.UTF-8",
        "EFTGW_REGION": "emea",
        "EFTGW_HOST": "127.0.0.1",
        "EFTGW_PUBLIC_URL": f"https://127.0.0.1:{ports['https']}",
        "EFTGW_DATABASE_URL": fresh_database("region"),
        "EFTGW_STORAGE": "s3",
        **fresh_bucket("region"),
        "EFTGW_TLS": "on",
        "EFTGW_TLS_CERT": str(secrets / "tls" / "cert.pem"),
        "EFTGW_TLS_KEY": str(secrets / "tls" / "key.pem"),
        "EFTGW_SIGNING_KEY": str(secrets / "keys" / "issuer-ed25519.pem"),
        "EFTGW_TRUSTED_KEYS_DIR": str(secrets / "trusted"),
        "EFTGW_SFTP_HOST_KEYS_DIR": str(secrets / "ssh"),
        "EFTGW_SFTP_ACCOUNT_KEY": str(secrets / "keys" / "sftp-accounts.key"),
        "EFTGW_PROXY_PROTOCOL": "on",
        "EFTGW_TRUSTED_PROXIES": TRUSTED_PROXY,
        "EFTGW_LOG_FORMAT": "json",
    }
    nodes = {
        name: Node(
            name,
            eftgw,
            base / name,
            {
                **shared,
                "EFTGW_NODE_NAME": name,
                "EFTGW_DATA_DIR": str(base / name / "data"),
                "EFTGW_HTTP_PORT": str(ports[name + "-http"]),
                "EFTGW_SFTP_PORT": str(ports[name + "-sftp"]),
            },
            ports[name + "-http"],
            ports[name + "-sftp"],
        )
        for name in NODES
    }
    region = Region(nodes, ports["https"], ports["sftp"], base / "haproxy.log", base=base)
    try:
        for node in nodes.values():
            node.start()
        start_haproxy(region, ports)
    except BaseException:
        stop_region(region)
        raise
    return region


def start_haproxy(region: Region, ports: dict[str, int]) -> None:
    config = region.base / "haproxy.cfg"
    config.write_text(haproxy_config(ports))
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"haproxy -c refused deploy/haproxy.cfg:\n{check.stdout}{check.stderr}"
    with open(region.haproxy_log, "ab") as log:
        region.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=log)
    haproxy = region.haproxy
    wait_until(
        lambda: haproxy.poll() is not None or (listening(region.https_port) and listening(region.sftp_port)),
        30,
        "HAProxy to listen",
    )
    if haproxy.poll() is not None:
        raise AssertionError(f"HAProxy exited at start: {region.haproxy_log.read_text()[-3000:]}")


def stop_region(region: Region) -> None:
    if region.haproxy is not None and region.haproxy.poll() is None:
        region.haproxy.send_signal(signal.SIGTERM)
        try:
            region.haproxy.wait(10)
        except subprocess.TimeoutExpired:
            region.haproxy.kill()
            region.haproxy.wait(5)
    for node in region.nodes.values():
        node.stop()
