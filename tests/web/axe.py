"""axe-core in the page: the accessibility rules of the npm package pinned in tests/web/node (its lockfile).

The gateway's CSP allows scripts from its own origin only, so a ``<script>`` tag with axe's source would be
refused. Each driver puts the source in through its own channel, which the page's CSP does not govern:
Playwright's ``evaluate`` (DevTools ``Runtime.evaluate``), puppeteer's over WebDriver BiDi
(``script.evaluate``), Selenium's ``execute_script``. Only then does ``axe.run`` read the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"
AXE_SOURCE = NODE_DIR / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
# Rules run: WCAG 2.0/2.1/2.2 A and AA, plus axe's best practices.
RUN_OPTIONS = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}
RUN = """async (options) => {
    const result = await axe.run(document, options);
    return result.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary })),
    }));
}"""


def axe_source() -> str:
    if not AXE_SOURCE.is_file():
        raise AssertionError(f"{AXE_SOURCE} is missing: run scripts/install-test-deps-web")
    return AXE_SOURCE.read_text(encoding="utf-8")


def blocking(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The serious and critical ones (what the tests refuse)."""
    return [v for v in violations if v["impact"] in BLOCKING]


async def playwright_violations(page: Any) -> list[dict[str, Any]]:
    """All violations axe finds on a Playwright page as it stands now."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(axe_source())
    result: list[dict[str, Any]] = await page.evaluate(RUN, RUN_OPTIONS)
    return result
