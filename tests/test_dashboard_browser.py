"""The live dashboard in a real browser: Debian's Chromium, headless, driven through Debian's
chromedriver with selenium.

The test serves a tree (three providers, a saga coordinator, the admin API), opens
``/dashboard``, injects faults into one provider while traffic flows, and watches its breaker
turn ``open`` on the page without a reload: the page is the same document (a marker set in it
survives), it never reconnected (one snapshot), and only update events arrived.  Then the
actions: read-only without a token; with the token, acknowledge an alert and reset the
breaker.  A second test checks the read token: the page asks for it, streams with it, and
a read token cannot act.

The browser is not optional here: without ``chromium`` and ``chromedriver`` the tests fail and
say what to install (``apt-get install -y chromium chromium-driver``; ``.ci/run`` does).  A
screenshot of the page with the breaker open is written to ``.ci-artifacts/dashboard.png``
(ignored by git; CI keeps it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from actors import (
    Actor,
    AuraError,
    BreakerSettings,
    Call,
    MemoryJournal,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
    chaos,
)
from actors._monitor._actor import MonitorActor
from actors._policies._config._monitoring import MonitorSettings
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep
from actors._saga._journals._records import SagaPhase, SagaSummary
from actors._saga._messages import ListSagas, StartSaga
from supervisors import ChildSpec, Supervisor, SupervisorSpec, open_supervisor
from supervisors._operator._admin._actor import GetAdminAddress, admin_spec

TOKEN = "dashboard-token-0123456789abcdef"
READ_TOKEN = "dashboard-read-0123456789abcdef"

#: Where the screenshot goes (``.gitignore`` ignores the folder; CI keeps it).
ARTIFACTS = Path(__file__).resolve().parent.parent / ".ci-artifacts"

#: What Chromium needs on a machine without a display or a network: headless, no sandbox (CI
#: runs as root), and none of its own background connections.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1100",
)

T = TypeVar("T")


def _find(name: str, *candidates: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium driven by chromedriver, with a fresh profile."""
    chromium = _find("chromium", "/usr/bin/chromium")
    driver_path = _find("chromedriver", "/usr/bin/chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            "the dashboard's browser tests need Debian's chromium and chromedriver: "
            "apt-get install -y chromium chromium-driver (.ci/run installs them)"
        )
    profile = tempfile.mkdtemp(prefix="aura-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run a (blocking) selenium call in a thread, so the tree keeps running meanwhile."""
    return await trio.to_thread.run_sync(lambda: fn(*args))


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 30) -> Any:
    """Wait (in the browser thread) until ``condition(driver)`` is truthy."""
    try:
        wait = WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.05,
            ignored_exceptions=[StaleElementReferenceException],
        )
        return wait.until(condition)
    except TimeoutException:
        state = driver.execute_script("return JSON.stringify(window.auraDashboard || null)")
        raise AssertionError(f"the page never showed {what}; its state: {state[:2000]}") from None


def text_of(selector: str) -> Callable[[Any], str]:
    """Reads the text ``selector`` shows (``""`` if absent), in one step of the page."""

    def read(driver: Any) -> str:
        text: str = driver.execute_script(
            "const found = document.querySelector(arguments[0]);"
            "return found ? found.innerText.trim() : '';",
            selector,
        )
        return text

    return read


def shows(selector: str, text: str) -> Callable[[Any], bool]:
    read = text_of(selector)
    return lambda driver: read(driver) == text


def page_state(driver: Any) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(
        "const s = window.auraDashboard; return {marker: window.__auraMarker || null, "
        "snapshots: s.snapshots, events: s.events, seq: s.seq, connection: s.connection, "
        "navigations: performance.getEntriesByType('navigation').length, "
        "resources: performance.getEntriesByType('resource').map(r => r.name)};"
    )
    return state


# ================================================================================ the tree


async def _llm(payload: Any) -> Any:
    await trio.sleep(0.002 + 0.004 * (hash(str(payload)) % 5))
    return {"text": "ok"}


def _tree(faults: chaos.FaultInjector, **admin: Any) -> SupervisorSpec:
    settings = ProviderSettings(
        retry=RetrySettings(max_attempts=1),
        breaker=BreakerSettings(failure_threshold=3, break_duration=600),
    )

    def provider(name: str, fn: Any) -> ChildSpec[Any, Any]:
        return ChildSpec(
            name,
            lambda: ProviderActor(name, fn, settings, monitor="monitor", report_interval=0.05),
        )

    checkout = SagaDefinition(
        "checkout",
        [
            SagaStep("draft", "providers/openai", action=lambda ctx: ctx.input),
            SagaStep("charge", "providers/payments", action=lambda ctx: ctx.input),
        ],
    )
    return SupervisorSpec(
        "app",
        [
            ChildSpec("monitor", lambda: MonitorActor(MonitorSettings(check_interval=1))),
            SupervisorSpec(
                "providers",
                [
                    provider("openai", _llm),
                    provider("anthropic", _llm),
                    provider("payments", chaos.wrap(_llm, faults)),
                ],
            ),
            ChildSpec(
                "sagas", lambda: SagaCoordinator(MemoryJournal(), [checkout], monitor="monitor")
            ),
            admin_spec(port=0, stream_interval=0.1, **admin),
        ],
    )


async def _traffic(root: Supervisor) -> None:
    """Calls to every provider, a few sagas, forever (until cancelled)."""
    refs = [root.ref(f"providers/{name}") for name in ("openai", "anthropic", "payments")]
    sagas = root.ref("sagas")
    n = 0
    while True:
        n += 1
        for ref in refs:
            try:
                await ref.ask(Call({"n": n}), timeout=2)
            except AuraError:
                pass  # an injected fault, an open breaker: what the page is about
        if n % 10 == 0:
            try:
                await sagas.ask(StartSaga("checkout", {"n": n}), timeout=5)
            except AuraError:
                pass
        await trio.sleep(0.03)


# ================================================================================ the tests


async def test_a_breaker_turns_open_live_and_the_token_enables_the_actions(browser: Any) -> None:
    """Faults injected into a provider open its breaker on the page without a reload; the page
    is read-only without a token; with it, an alert is acknowledged and the breaker reset."""
    faults = chaos.FaultInjector("dependency", rate=1.0, enabled=False, seed=1)
    breaker = 'tr[data-service="payments"] td[data-field="breaker"]'
    async with open_supervisor(_tree(faults, token=TOKEN)) as root, trio.open_nursery() as nursery:
        url = (await root.ref("admin").ask(GetAdminAddress())).url
        nursery.start_soon(_traffic, root)
        await run(browser.get, f"{url}/dashboard")
        await run(wait_for, browser, shows(breaker, "closed"), "payments with a closed breaker")
        completed = text_of('[data-outcome="completed"]')
        await run(wait_for, browser, lambda d: completed(d).isdigit() and int(completed(d)) > 0,
                  "a saga completed")  # fmt: skip
        await run(browser.execute_script, "window.__auraMarker = 'same document';")
        before = await run(page_state, browser)
        assert before["connection"] == "live"
        assert before["snapshots"] == 1

        # Read-only: the actions are there, and disabled.
        reset = 'tr[data-service="payments"] button[data-action="reset"]'
        assert await run(_enabled, browser, reset) is False

        faults.enabled = True  # every call to payments fails from now on
        await run(wait_for, browser, shows(breaker, "open"), "the payments breaker open")
        alert = 'tr[data-rule="breaker_open"]'
        await run(wait_for, browser, lambda d: d.find_elements(By.CSS_SELECTOR, alert), "alert")
        after = await run(page_state, browser)
        assert after["marker"] == "same document"  # no reload: the same page, updated
        assert after["navigations"] == 1
        assert after["snapshots"] == 1  # one stream all along: updates only, no resync
        assert after["events"] > before["events"]
        assert after["seq"] > before["seq"]
        origin = url.rstrip("/")
        assert all(name.startswith(origin + "/") for name in after["resources"]), after
        ARTIFACTS.mkdir(exist_ok=True)
        await run(browser.save_screenshot, str(ARTIFACTS / "dashboard.png"))
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

        # With the token: acknowledge the alert, then (faults gone) reset the breaker.
        token_box = await run(browser.find_element, By.ID, "token")
        await run(token_box.send_keys, TOKEN)
        await run(click, browser, "#token-form button[type=submit]")
        await run(click, browser, f'{alert} button[data-action="acknowledge"]')
        state = f"{alert} td:nth-child(6)"
        await run(wait_for, browser, shows(state, "acknowledged"), "the alert acknowledged")
        faults.enabled = False
        await run(click, browser, reset)
        await run(wait_for, browser, shows(breaker, "closed"), "the breaker closed again")
        assert (await run(page_state, browser))["marker"] == "same document"
        nursery.cancel_scope.cancel()


def _enabled(driver: Any, selector: str) -> bool | None:
    """Whether the button ``selector`` names is enabled (``None``: there is none)."""
    enabled: bool | None = driver.execute_script(
        "const found = document.querySelector(arguments[0]);return found ? !found.disabled : null;",
        selector,
    )
    return enabled


def click(driver: Any, selector: str) -> None:
    """Click the element ``selector`` names once it is enabled (looked up afresh each try)."""

    def clicked(driver: Any) -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_for(driver, lambda d: _enabled(d, selector) is True and clicked(d), f"{selector} clicked")


async def test_with_a_read_token_the_page_asks_for_it_and_cannot_act_with_it(
    browser: Any,
) -> None:
    """The page holds no data: with a read token configured it loads, says it needs a token,
    streams once given the read token, and an action with that token is refused (403)."""
    faults = chaos.FaultInjector("dependency", rate=1.0, enabled=False, seed=1)
    spec = _tree(faults, token=TOKEN, read_token=READ_TOKEN)
    async with open_supervisor(spec) as root, trio.open_nursery() as nursery:
        url = (await root.ref("admin").ask(GetAdminAddress())).url
        nursery.start_soon(_traffic, root)
        await run(browser.get, f"{url}/dashboard")
        await run(browser.execute_script, "sessionStorage.clear();")
        await run(browser.refresh)
        await run(wait_for, browser, shows("#connection", "needs a token"), "a token request")
        assert (await run(page_state, browser))["snapshots"] == 0  # nothing was shown
        token_box = await run(browser.find_element, By.ID, "token")
        await run(token_box.send_keys, READ_TOKEN)
        await run(click, browser, "#token-form button[type=submit]")
        row = 'tr[data-service="payments"] td[data-field="breaker"]'
        await run(wait_for, browser, shows(row, "closed"), "the services, read with the token")
        isolate = 'tr[data-service="payments"] button[data-action="isolate"]'
        await run(click, browser, isolate)
        await run(wait_for, browser, shows("#toast", "isolate payments: the token is not valid"),
                  "the refusal")  # fmt: skip
        assert await run(text_of(row), browser) == "closed"
        await run(browser.execute_script, "sessionStorage.clear();")
        nursery.cancel_scope.cancel()


#: The instance a stand-in fleet coordinator says drives a saga (a journal id is 32 hex digits).
OWNER = "3f2a9c1e4b7d4e0f9a1b2c3d4e5f6a7b"


class _FleetSagas(Actor[Any, Any]):
    """Stands in for a coordinator over a journal a fleet shares: it lists a saga another
    instance drives and one with no owner (as a journal of one instance lists them)."""

    async def handle(self, message: Any) -> Any:
        if isinstance(message, ListSagas):
            at = time.time()
            held = SagaPhase.STEP_IN_FLIGHT
            return [
                SagaSummary("order-7", "checkout", at, held, 1, 1, None, 0, 3, at, {}, OWNER),
                SagaSummary("solo-1", "checkout", at, held, 0, 0, None, 0, 2, at, {}, None),
            ]
        return None  # statistics: none to show


async def test_the_sagas_table_names_each_sagas_owner(browser: Any) -> None:
    """Each unfinished saga's row names the instance that drives it: the start of its id,
    the whole id on hover; a saga of a journal of one instance shows a dash."""
    tree = [
        ChildSpec("monitor", MonitorActor),
        ChildSpec("sagas", _FleetSagas),
        admin_spec(port=0, stream_interval=0.1),
    ]
    async with open_supervisor(tree) as root:
        url = (await root.ref("admin").ask(GetAdminAddress())).url
        await run(browser.get, f"{url}/dashboard")
        owner = 'tr[data-saga="order-7"] td[data-field="owner"]'
        await run(wait_for, browser, shows(owner, OWNER[:12]), "the saga's owner")
        title = await run(
            browser.execute_script,
            "return document.querySelector(arguments[0]).title;",
            owner,
        )
        assert title == OWNER
        alone = 'tr[data-saga="solo-1"] td[data-field="owner"]'
        assert await run(text_of(alone), browser) == "\u2013"  # an en dash
        headers = await run(text_of("#sagas thead"), browser)
        assert headers.split() == ["Saga", "Definition", "Phase", "Steps", "done", "Owner"]
