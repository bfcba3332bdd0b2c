"""The status page at ``/``: in a real browser (Debian's chromium, driven by Playwright) against a real
server on the bundled models, and what ``/`` answers clients that are not browsers.

The browser is the system's chromium, not one Playwright downloads (that needs the internet); without
it the test fails and says how to install it: a page nobody tried in a browser is not tested. The
screenshot each run takes is left in ``STATUS_PAGE_SCREENSHOT`` (default
``test-artifacts/status-page.png``, git-ignored) for a person to look at, and beside the test's logs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningServer, start_server, stop_server
from fake_engines import serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(
    os.environ.get("STATUS_PAGE_SCREENSHOT", Path(__file__).parent.parent / "test-artifacts/status-page.png")
)
MINILM = "all-MiniLM-L6-v2"
SMOLLM = "SmolLM2-135M-Instruct"
KEY = "status-page-test-key"
# A first load of MiniLM takes seconds; on a busy 2-core machine, more.
LOAD_TIMEOUT_MS = 120_000


# --- what / answers without a browser ------------------------------------------------------------------
def get_root(data_dir: Path, method: str = "GET", **headers: str) -> httpx.Response:
    async def send() -> httpx.Response:
        async with serving(data_dir, api_keys=[KEY]) as (client, _):
            return await client.request(method, "/", headers=headers)

    return asyncio.run(send())


@pytest.mark.unit
def test_a_browser_gets_the_page_without_a_key(tmp_path: Path) -> None:
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # what Chromium sends
    response = get_root(tmp_path, Accept=accept)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["vary"] == "Accept"
    assert "<title>local-llm-interface</title>" in response.text
    # The page holds no data of its own: the models are read by the page, with the key.
    assert "tiny-embed" not in response.text


@pytest.mark.unit
@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_other_clients_get_ollamas_greeting(tmp_path: Path, accept: str | None) -> None:
    """Ollama's clients probe ``/`` for 200 ``Ollama is running`` before they use ``/api``."""
    response = get_root(tmp_path, **({"Accept": accept} if accept else {}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Ollama is running"
    head = get_root(tmp_path, "HEAD")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/plain")


# --- the page in a browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium with a fresh profile (Playwright's ``launch`` makes one per browser)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the status page is tested in Debian's chromium "
            "(`apt-get install -y chromium`; scripts/setup.sh does it when run as root)."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: it is in the dev extra (`make setup`)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in its own context (its own localStorage), failing the test on any script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with no models folder of its own: what it serves are the bundled models."""
    root = tmp_path_factory.mktemp("status-page")
    (root / "models").mkdir()
    running = start_server(root / "models", root / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("status-page-keyed")
    (root / "models").mkdir()
    # A RAM budget the bundled chat model does not fit (MiniLM does): its load is refused with 507.
    env = {"LLM_API_KEYS": KEY, "LLM_AVAILABLE_RAM_GB": "2"}
    running = start_server(root / "models", root / "server.log", env=env)
    yield running
    stop_server(running)


def state_of(page: Any, model: str) -> Any:
    return page.locator(f'#models tr[data-model="{model}"] [data-state]')


def button(page: Any, model: str, action: str) -> Any:
    return page.locator(f'#models tr[data-model="{model}"] button[data-action="{action}"]')


def api_state(server: RunningServer, model: str, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    card = httpx.get(f"{server.api}/models/{model}", headers=headers, timeout=30).json()
    state: str = card["state"]
    return state


def save_screenshot(page: Any, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "status-page.png", SCREENSHOT)


@pytest.mark.server
def test_the_page_shows_the_models_and_its_buttons_load_and_unload(
    page: Any, bundled_server: RunningServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    listed = [card["id"] for card in httpx.get(bundled_server.api + "/models", timeout=30).json()["data"]]
    assert MINILM in listed
    page.goto(bundled_server.base_url + "/")
    # Every model the API lists is a row, with its kind and state.
    expect(page.locator("#models tbody tr")).to_have_count(len(listed))
    for model in listed:
        expect(page.locator(f'#models tr[data-model="{model}"] .model-name')).to_have_text(model)
    expect(state_of(page, MINILM)).to_have_attribute("data-state", "available")
    expect(page.locator(f'#models tr[data-model="{MINILM}"] .kind')).to_have_text("embedding")

    # Load with the button: it waits for the answer, then the row says loaded, with its placement.
    button(page, MINILM, "load").click()
    expect(state_of(page, MINILM)).to_have_attribute("data-state", "loaded", timeout=LOAD_TIMEOUT_MS)
    assert api_state(bundled_server, MINILM) == "loaded"
    row = page.locator(f'#models tr[data-model="{MINILM}"]')
    expect(row).to_contain_text("cpu")
    expect(row).to_contain_text("MiB")
    # The memory bar has the model's segment beside the server's own (the first answer of
    # /admin/memory waits for the server's start-up measurements).
    expect(page.locator(f'.device[data-device="ram"] .seg[title^="{MINILM}:"]')).to_have_count(
        1, timeout=LOAD_TIMEOUT_MS
    )
    expect(page.locator('.device[data-device="ram"] .seg.overhead')).to_have_count(1)
    save_screenshot(page, tmp_path)

    button(page, MINILM, "unload").click()
    expect(state_of(page, MINILM)).to_have_attribute("data-state", "available", timeout=30_000)
    assert api_state(bundled_server, MINILM) == "available"
    # The journal, newest on top: the operator's unload, and before it the load with its seconds.
    newest = page.locator(f'#events tbody tr:has(td.model-name:text-is("{MINILM}"))')
    expect(newest.first.locator("[data-event]")).to_have_attribute("data-event", "unloaded")
    expect(newest.first.locator("[data-cause]")).to_have_attribute("data-cause", "operator")
    loaded = page.locator(f'#events tbody tr:has([data-event="loaded"]):has(td:text-is("{MINILM}"))')
    expect(loaded).to_have_count(1)
    expect(loaded.locator("td.num")).to_have_text(re.compile(r"\d+\.\d+ s"))
    page.screenshot(path=str(tmp_path / "status-page-unloaded.png"), full_page=True)

    # Chinese: every label on the page has both languages, and the choice is kept for the next visit.
    page.locator('[data-lang="zh"]').click()
    expect(page.locator('[data-label="models"]')).to_have_text("模型")
    expect(state_of(page, MINILM)).to_have_text("可用")
    missing = page.evaluate(
        """() => {
            const en = Object.keys(LABELS.en), zh = Object.keys(LABELS.zh);
            const used = [...document.querySelectorAll('[data-label]')].map((n) => n.dataset.label);
            return [...en.filter((k) => !zh.includes(k)), ...zh.filter((k) => !en.includes(k)),
                    ...used.filter((k) => !en.includes(k))];
        }"""
    )
    assert missing == []
    page.reload()
    expect(page.locator('[data-label="models"]')).to_have_text("模型")


@pytest.mark.server
def test_a_chat_models_load_shows_its_stage_and_time_until_it_is_up(
    page: Any, bundled_server: RunningServer, tmp_path: Path
) -> None:
    """A first chat load takes 15 s or more here (vLLM's engine process starts): the row shows where
    it is (the card's ``loading``: a stage and the seconds so far) while it lasts, then ``loaded``."""
    from playwright.sync_api import expect

    page.goto(bundled_server.base_url + "/")
    expect(state_of(page, SMOLLM)).to_have_attribute("data-state", "available")
    button(page, SMOLLM, "load").click()
    progress = page.locator(f'#models tr[data-model="{SMOLLM}"] .progress .small')
    expect(progress).to_have_text(re.compile(r"^\S.* · \d+(\.\d+)? s"), timeout=30_000)
    expect(state_of(page, SMOLLM)).to_have_attribute("data-state", "loading")
    page.screenshot(path=str(tmp_path / "status-page-loading.png"), full_page=True)
    expect(state_of(page, SMOLLM)).to_have_attribute("data-state", "loaded", timeout=LOAD_TIMEOUT_MS)
    expect(progress).to_have_count(0)
    assert api_state(bundled_server, SMOLLM) == "loaded"


@pytest.mark.server
def test_with_api_keys_the_page_asks_for_one_and_keeps_it(page: Any, keyed_server: RunningServer) -> None:
    from playwright.sync_api import expect

    # The page itself is open; what it reads is not.
    assert httpx.get(keyed_server.base_url + "/", headers={"Accept": "text/html"}).status_code == 200
    assert httpx.get(keyed_server.api + "/models").status_code == 401
    page.goto(keyed_server.base_url + "/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#models tbody tr")).to_have_count(0)

    # A wrong key is asked for again; the right one is kept in localStorage and the models show.
    page.fill("#key-input", "wrong-key")
    page.click("#key-save")
    expect(dialog).to_be_visible()
    page.fill("#key-input", KEY)
    page.click("#key-save")
    expect(dialog).to_be_hidden()
    expect(page.locator(f'#models tr[data-model="{MINILM}"]')).to_have_count(1)
    assert page.evaluate("() => localStorage.getItem('local-llm.api-key')") == KEY
    page.reload()
    expect(page.locator(f'#models tr[data-model="{MINILM}"]')).to_have_count(1)
    expect(dialog).to_be_hidden()

    # The buttons send the key too.
    headers = {"Authorization": f"Bearer {KEY}"}
    loaded = httpx.post(f"{keyed_server.base_url}/admin/models/{MINILM}/load", headers=headers, timeout=120)
    assert loaded.status_code == 200, loaded.text
    expect(state_of(page, MINILM)).to_have_attribute("data-state", "loaded")
    button(page, MINILM, "unload").click()
    expect(state_of(page, MINILM)).to_have_attribute("data-state", "available", timeout=30_000)
    assert api_state(keyed_server, MINILM, KEY) == "available"

    # A refused action shows the server's own message.
    button(page, SMOLLM, "load").click()
    toast = page.locator("#toast")
    expect(toast).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    expect(toast).to_contain_text(SMOLLM)
    expect(toast).to_contain_text("budget")
    expect(state_of(page, SMOLLM)).to_have_attribute("data-state", "available")
