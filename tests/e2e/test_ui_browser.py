"""The Gradio demo in a real headless Chromium, against the real gateway + vLLM, as a user would click through it.

Drives Debian's Chromium (/usr/bin/chromium; `apt-get install -y chromium`, no browser download) with
Playwright: upload a generated image and watch the answer stream in; register an adapter in the admin tab and
read the live SLO plots; switch the chat to the adapter; compare base and adapter side by side; send a corrupt
image and read the gateway's error. Where a test needs an answer to arrive in pieces, or to be still running when
Stop is clicked, it holds the engine still and lets it run in short bursts (`engine_held`): free-running, the engine
can finish before a busy 2-core box's browser has drawn anything. Screenshots go to $VLMGATE_UI_SCREENSHOTS if
set, else a pytest tmp dir (printed at the end); the README's images in docs/screenshots/ were copied from such a
run.

Run as: python -m pytest tests/e2e/test_ui_browser.py -v -s
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import (
    RunningGateway,
    disconnected_requests,
    engine_held,
    free_port,
    metric_lines,
    metric_total,
    request_counts,
)
from vlmgate.ui.messages import image_data_url

pytestmark = pytest.mark.engine

CHROMIUM = Path("/usr/bin/chromium")
# As root in a container: no sandbox; the closed network refuses Chromium's background connections, so turn
# them off rather than let them fail at every start.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
UI_START_TIMEOUT_S = 180.0
STEP_TIMEOUT_MS = 180_000  # one answer on a contended CPU engine, generously
ADAPTER = "ui-shapes"
COMPARE_QUESTION = "What shape is in the image, and what colour?"
MAX_TOKENS = 12
STOP_MAX_TOKENS = 1500  # the Stop test's answer: far more tokens than its engine bursts let out


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = Path(os.environ.get("VLMGATE_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    yield out
    print(f"\nUI screenshots: {out}")


@pytest.fixture(scope="module")
def ui_url(gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vlmgate ui` as a user starts it, pointed at the session gateway."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui") / "ui.log"
    argv = [sys.executable, "-m", "vlmgate", "ui", "--gateway", gateway.url, "--port", str(port),
            "--max-tokens", str(MAX_TOKENS)]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vlmgate ui exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vlmgate ui did not answer in {UI_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.fail(f"No Chromium at {CHROMIUM}: the browser test needs Debian's package (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, ui_url: str) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.goto(ui_url)
    # The page is usable once the model picker has been filled from GET /v1/models.
    page.wait_for_function("document.querySelector('#model-picker input')?.value.length > 0")
    yield page
    context.close()


@pytest.fixture(scope="module")
def adapter_dir(gateway: RunningGateway, adapter_store: Path, images: dict[str, Path]) -> Iterator[Path]:
    """A random-weight PEFT adapter for the served model, inside the gateway's adapter store (not yet registered),
    checked with transformers to change the greedy answer to the compare tab's question about the test image."""
    from tests.adapter_factory import make_answer_changing_adapter

    path = make_answer_changing_adapter(gateway.model_dir, adapter_store / ADAPTER, COMPARE_QUESTION, images["good"])
    yield path
    # Leave the shared gateway as we found it: other tests expect only the base in /v1/models.
    httpx.delete(f"{gateway.url}/v1/adapters/{ADAPTER}", timeout=60)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ui-images")
    good = folder / "red-circle.png"
    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse((48, 48, 176, 176), fill="red")
    image.save(good)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 20)  # a PNG signature, then garbage
    return {"good": good, "corrupt": corrupt}


# --- small page helpers ---------------------------------------------------------------------------------------

BOT_TEXTS_JS = "() => [...document.querySelectorAll('#chatbot [data-testid=bot]')].map(e => e.innerText)"
SETTINGS_JS = (  # the stop test's two settings as the page shows them
    "[document.querySelector('#max-tokens input[type=number]')?.value,"
    " document.querySelector('#exact-tokens input')?.checked]"
)


def send_chat(page, text: str, files: list[Path] = ()) -> None:
    box = page.locator("#chat-input")
    if files:
        box.locator("input[type=file]").set_input_files([str(f) for f in files])
        # Wait for Gradio to upload them: one thumbnail per file in the input box.
        page.wait_for_function(f"document.querySelectorAll('#chat-input img').length >= {len(files)}", timeout=60_000)
    box.locator("textarea").fill(text)
    box.locator("textarea").press("Enter")


def pick(page, dropdown_id: str, value: str) -> None:
    """Choose an option of a Gradio dropdown by its value (the labels carry '(base)' / '(adapter on ...)')."""
    page.locator(f"#{dropdown_id} input").click()
    page.locator("ul[role=listbox] li", has_text=value).first.click()
    page.wait_for_function(f"document.querySelector('#{dropdown_id} input').value.startsWith('{value}')")


def set_number(page, elem_id: str, value: float) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    if not field.is_visible():  # the sliders live in a collapsed accordion, rendered when it opens
        page.get_by_text("Generation settings and connection").click()
    # A field that has just been rendered is set from the app's state a moment later, which can overwrite what was
    # typed into it: type again until the value holds.
    for _ in range(5):
        field.fill(str(value))
        field.press("Enter")
        time.sleep(1)
        if field.input_value() == str(value):
            return
    pytest.fail(f"#{elem_id} does not keep the value {value}: it shows {field.input_value()!r}")


def answers_so_far(gateway: RunningGateway) -> dict[str, float]:
    """What the gateway has completed: answers, tokens generated, seconds spent (its counters, all labels)."""
    return {"answers": metric_total(gateway.url, "vlmgate_e2e_request_latency_seconds_count"),
            "tokens": metric_total(gateway.url, "vlmgate_generation_tokens_total"),
            "seconds": metric_total(gateway.url, "vlmgate_e2e_request_latency_seconds_sum")}  # fmt: skip


def in_flight(gateway: RunningGateway) -> int:
    (line,) = metric_lines(gateway, "vlmgate_requests_in_flight ")
    return int(float(line.split()[1]))


def run_until(page, burst: Callable[[], None], condition_js: str) -> None:
    """Let a held engine run burst by burst until the page meets the condition (a JS expression)."""
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    while not page.evaluate(condition_js):
        if time.monotonic() > deadline:
            shown = page.evaluate(BOT_TEXTS_JS)
            pytest.fail(f"Not met in {STEP_TIMEOUT_MS / 1000:.0f} s: {condition_js}; the page shows {shown}")
        burst()
        time.sleep(0.3)  # time for the burst's tokens to reach the page


def stats_titles(page) -> list[str]:
    return [t for t in page.evaluate(BOT_TEXTS_JS) if "TTFT" in t]


# --- the user's path ------------------------------------------------------------------------------------------


def test_chat_streams_an_answer_about_an_uploaded_image(page, gateway: RunningGateway, images, shots: Path) -> None:
    assert page.locator("#model-picker input").input_value().startswith(gateway.model)
    # The trained demo model may answer in one token ("red"): ask for exactly MAX_TOKENS to watch them stream.
    page.get_by_text("Generation settings and connection").click()
    page.locator("#exact-tokens input").check()
    # Record every text the answer bubble shows while it streams in (the DOM changes, not our polling rate).
    page.evaluate("""() => {
        window.__snapshots = [];
        new MutationObserver(() => {
            const bot = document.querySelector('#chatbot [data-testid=bot]');
            if (bot) window.__snapshots.push(bot.innerText);
        }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
    }""")
    # The engine runs in short bursts, so that the answer comes in several pieces however fast this box's engine is
    # (free-running, all 12 tokens can reach the page in one screen update).
    with engine_held(gateway) as burst:
        send_chat(page, "What colour is the shape?", [images["good"]])
        run_until(page, burst, f"({BOT_TEXTS_JS})().some(t => t.includes('TTFT'))")
    # The user's image is shown in the conversation, served back by the UI.
    assert page.locator("#chatbot [data-testid=user] img").count() == 1
    answer = page.evaluate(BOT_TEXTS_JS)[0]
    partial = [s for s in dict.fromkeys(page.evaluate("window.__snapshots")) if s.strip() and "TTFT" not in s]
    assert answer.strip()
    # Streamed: the bubble showed the answer growing, not just once complete.
    assert len(partial) >= 2, partial
    assert len(partial[0]) < len(answer)
    [title] = stats_titles(page)
    assert title.startswith(f"{gateway.model} · TTFT")
    assert "tok/s" in title
    assert "tokens" in title
    page.screenshot(path=shots / "chat.png")


def test_admin_registers_an_adapter_and_shows_live_slos(page, gateway: RunningGateway, adapter_dir, shots) -> None:
    page.get_by_role("tab", name="Admin").click()
    page.wait_for_function("document.querySelector('#adapters-status').innerText.includes('adapter(s)')")
    page.locator("#adapter-name textarea, #adapter-name input").first.fill(ADAPTER)
    page.locator("#adapter-path textarea, #adapter-path input").first.fill(str(adapter_dir))
    page.locator("#adapter-register").click()
    page.wait_for_function(f"document.querySelector('#admin-result').innerText.includes('{ADAPTER}')")
    result = page.locator("#admin-result").inner_text()
    assert result.startswith(f"✓ Adapter {ADAPTER} registered"), result
    # The table and the model pickers follow: the adapter is listed with its state.
    page.wait_for_function(f"document.querySelector('#adapters-table').innerText.includes('{ADAPTER}')")
    assert "live" in page.locator("#adapters-table").inner_text() or "registered" in result
    # Live SLOs: the previous test's request is in the report, and both plots are drawn (matplotlib PNGs).
    page.locator("#slo-live input").uncheck()  # a still page for the screenshot
    page.locator("#slo-refresh").click()
    page.wait_for_function("document.querySelector('#slo-status').innerText.includes('reported')")
    page.wait_for_function("['latency', 'attainment'].every(p => document.querySelector(`#slo-${p} img`))")
    page.wait_for_function("!document.querySelector('#slo-latency .eta-bar, #slo-attainment .eta-bar')")
    assert gateway.model in page.locator("#slo-table").inner_text()
    page.screenshot(path=shots / "admin.png", full_page=True)


def test_chat_switches_to_the_adapter_and_compares_it_with_the_base(page, gateway, adapter_dir, images, shots) -> None:
    models = httpx.get(f"{gateway.url}/v1/models", timeout=30).json()["data"]
    if not any(m["id"] == ADAPTER for m in models):  # registered through the UI above, unless run alone
        response = httpx.post(
            f"{gateway.url}/v1/adapters", json={"name": ADAPTER, "path": str(adapter_dir)}, timeout=300
        )
        assert response.status_code == 201, response.text
        page.locator("#refresh-models").click()
    pick(page, "model-picker", ADAPTER)
    send_chat(page, "Describe the picture.", [images["good"]])
    page.wait_for_function(f"({BOT_TEXTS_JS})().some(t => t.includes('TTFT'))")
    assert stats_titles(page)[0].startswith(f"{ADAPTER} · TTFT")

    page.get_by_role("tab", name="Compare side by side").click()
    page.locator("#compare-image input[type=file]").set_input_files(str(images["good"]))
    page.wait_for_function("document.querySelector('#compare-image img') !== null", timeout=60_000)
    set_number(page, "temperature", 0)  # greedy on both sides: any difference is the adapter's doing
    page.locator("#compare-question textarea").fill(COMPARE_QUESTION)
    pick(page, "compare-model-a", gateway.model)
    pick(page, "compare-model-b", ADAPTER)
    page.locator("#compare-run").click()
    page.wait_for_function(
        "['a', 'b'].every(s => document.querySelector('#compare-stats-' + s).innerText.includes('TTFT'))"
    )
    answer_a = page.locator("#compare-answer-a textarea").input_value()
    answer_b = page.locator("#compare-answer-b textarea").input_value()
    assert answer_a.strip()
    assert answer_b.strip()
    assert answer_a != answer_b  # transformers+peft showed this adapter changes this greedy answer (fixture)
    assert f"model {ADAPTER}" in page.locator("#compare-stats-b").inner_text()
    page.screenshot(path=shots / "compare.png")


def test_corrupt_image_shows_the_gateway_error_and_the_chat_goes_on(page, gateway, images, shots) -> None:
    send_chat(page, "What is in this image?", [images["corrupt"]])
    page.wait_for_function(f"({BOT_TEXTS_JS})().some(t => t.includes('Gateway error 400'))")
    error = next(t for t in page.evaluate(BOT_TEXTS_JS) if "Gateway error 400" in t)
    # The gateway's own explanation is shown, not just a status code.
    gateway_says = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, json={
        "model": gateway.model, "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(images["corrupt"])}}]}]},
    ).json()["error"]["message"]  # fmt: skip
    assert gateway_says in error
    page.screenshot(path=shots / "error.png")
    # The UI lives on, and the rejected turn is not resent with the next question.
    send_chat(page, "Say hello.")
    page.wait_for_function(f"({BOT_TEXTS_JS})().some(t => t.includes('TTFT'))")
    assert sum("Gateway error" in t for t in page.evaluate(BOT_TEXTS_JS)) == 1


def test_stop_button_abandons_the_request_at_the_gateway(page, gateway: RunningGateway) -> None:
    pick(page, "model-picker", gateway.model)
    before = disconnected_requests(gateway)
    done_before = answers_so_far(gateway)
    tokens_before = metric_total(gateway.engine_url, "vllm:generation_tokens_total")
    set_number(page, "max-tokens", STOP_MAX_TOKENS)
    page.locator("#exact-tokens input").check()  # no early end of sequence: the answer is still running at Stop
    # Both settings must have reached the app before the question leaves (else the demo model's short natural
    # answer ends before Stop can abandon it).
    page.wait_for_function(f"JSON.stringify({SETTINGS_JS}) === '[\"{STOP_MAX_TOKENS}\",true]'")
    page.locator("#chat-input textarea").click()  # takes the focus off the settings, committing them
    # Stop must land while the answer runs, whatever the speeds of this box's engine and browser: on a busy 2-core
    # box the page first showed text after the free-running engine had finished all its tokens. So the engine is
    # held still, and let run in short bursts until the answer shows.
    with engine_held(gateway) as burst:
        send_chat(page, "Count from one to a thousand.")
        run_until(page, burst, f"({BOT_TEXTS_JS})().some(t => t.trim().length > 0)")
        running = in_flight(gateway)
        page.locator("#chat-stop").click()
        if running != 1:
            shown, settings = page.evaluate(f"[({BOT_TEXTS_JS})(), {SETTINGS_JS}]")
            done = {k: v - done_before[k] for k, v in answers_so_far(gateway).items()}
            pytest.fail(f"The answer was no longer streaming when Stop was clicked: nothing left to abandon. "
                        f"Completed since the question: {done}. Page: settings {settings}, "
                        f"{[len(t) for t in shown]} characters shown: {[t[:80] for t in shown]}")  # fmt: skip
        # The UI closed its stream: the gateway records a client disconnect, without the (held) engine's help.
        deadline = time.monotonic() + 120
        while disconnected_requests(gateway) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert disconnected_requests(gateway) == before + 1, (page.evaluate(BOT_TEXTS_JS), request_counts(gateway))
    # Released, the engine drops the abandoned request instead of generating the rest of its tokens.
    deadline = time.monotonic() + 60
    while metric_total(gateway.engine_url, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metric_total(gateway.engine_url, "vllm:num_requests_running") == 0
    generated = metric_total(gateway.engine_url, "vllm:generation_tokens_total") - tokens_before
    assert generated < STOP_MAX_TOKENS / 2, f"the engine generated {generated} tokens of the abandoned answer"
    # The partial answer stays; no timing note, since the answer never finished.
    texts = page.evaluate(BOT_TEXTS_JS)
    assert texts[0].strip()
    assert not any("TTFT" in t for t in texts)
