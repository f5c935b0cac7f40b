"""WebKit for the page tests: Debian's WebKitWebDriver (MiniBrowser) through Selenium, on an Xvfb display.

MiniBrowser has no headless mode and, without a display, Selenium's new-session call hangs until its own
timeout; so :func:`xvfb_display` starts ``Xvfb`` (it picks a free display number itself, ``-displayfd``)
and fails at once if that cannot be done. Selenium is synchronous: :class:`WebKitPage` runs each call in a
thread, so the test's event loop (and the in-process gateway and proxy on it) keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException

WEBKIT_DRIVER = "/usr/bin/WebKitWebDriver"


@contextlib.contextmanager
def xvfb_display() -> Iterator[str]:
    """A private X display (``:N``) for as long as the block runs."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise AssertionError("Xvfb is missing: run scripts/install-test-deps-web")
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as announced:
            number = announced.readline().strip()
        if not number.isdigit():
            process.kill()
            raise AssertionError(f"Xvfb did not start: {process.communicate(timeout=10)[1].decode()[-2000:]}")
        yield f":{number}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr is not None:
            process.stderr.close()


def start_webkit(display: str) -> webdriver.WebKitGTK:
    if not os.access(WEBKIT_DRIVER, os.X_OK):
        raise AssertionError(f"{WEBKIT_DRIVER} is missing: run scripts/install-test-deps-web")
    options = webdriver.WebKitGTKOptions()  # MiniBrowser; the driver adds --automation
    options.accept_insecure_certs = True  # the gateway's self-signed certificate
    service = webdriver.WebKitGTKService(
        executable_path=WEBKIT_DRIVER, env={**os.environ, "DISPLAY": display}
    )
    with warnings.catch_warnings():
        # Selenium's own WebKitGTK class still passes remote_server_addr to RemoteConnection (selenium 4.51).
        warnings.filterwarnings("ignore", "setting remote_server_addr", DeprecationWarning)
        return webdriver.WebKitGTK(options=options, service=service)


class WebKitPage:
    """The page in WebKit, every WebDriver call run off the event loop."""

    def __init__(self, driver: webdriver.WebKitGTK) -> None:
        self.driver = driver

    @property
    def version(self) -> str:
        caps = self.driver.capabilities
        return f"{caps.get('browserName')} {caps.get('browserVersion')}"

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def url(self) -> str:
        return await asyncio.to_thread(lambda: self.driver.current_url)

    async def js(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a function body (``return ...``) in the page."""
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def js_async(self, script: str, *args: Any) -> Any:
        """Run ``script`` with a callback as its last argument; the page calls it with the result."""
        return await asyncio.to_thread(self.driver.execute_async_script, script, *args)

    async def choose(self, selector: str, *paths: str) -> None:
        def send() -> None:
            self.driver.find_element("css selector", selector).send_keys("\n".join(paths))

        await asyncio.to_thread(send)

    async def reload(self) -> None:
        def refresh() -> None:
            self.driver.refresh()
            with contextlib.suppress(NoAlertPresentException):
                self.driver.switch_to.alert.accept()  # beforeunload while uploads run: the test means it

        await asyncio.to_thread(refresh)

    async def wait_until(self, expression: str, what: str, within: float = 90) -> Any:
        """Poll ``expression`` (a JavaScript expression) until it is truthy; its value."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await self.js(f"return {expression}")
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"WebKit: gave up waiting for {what} after {within}s")

    async def quit(self) -> None:
        await asyncio.to_thread(self.driver.quit)
