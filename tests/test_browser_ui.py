"""The draw-together page in a real browser: Debian's headless Chromium, driven by Selenium
through Debian's chromedriver.

Selenium, not Playwright: Debian builds chromium and chromium-driver from one source, so the
driver always matches the browser, and Selenium brings no browser or Node.js runtime of its
own (Playwright's wheel carries a Node driver made for its own Chromium builds). Its W3C
actions also send pen and touch pointers, not only a mouse, so all three kinds are drawn.

The test draws a stroke with each, asks the bundled cat for endings, waits for the
animation, checks that every ending begins with the drawn strokes as the server simplified
them, that the canvases are not blank and the SVG download is an SVG, and saves
docs/images/serve.png (the README's picture). It fails, never skips, without Chromium.
"""
import io
import json
import os
import shutil
import threading
import xml.etree.ElementTree as ET

import jax
import numpy as np
import pytest
import rdp
from PIL import Image

from conftest import REPO
from experiments import serve
from sketch_vae import checkpoint, config as config_lib, data, serving, train

# np.cross on 2-d vectors inside the `rdp` package.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1180,1060", "--force-device-scale-factor=1", "--hide-scrollbars")
SCREENSHOT = REPO / "docs" / "images" / "serve.png"
CIRCLE = np.linspace(0.2, 2 * np.pi + 0.2, 40)
# A cat's head with a mouse, its ears with a pen and a finger (canvas px).
STROKES = [("mouse", np.stack([240 + 95 * np.cos(CIRCLE), 270 + 80 * np.sin(CIRCLE)], 1)),
           ("pen", np.array([[165, 225], [170, 140], [215, 195]], float)),
           ("touch", np.array([[265, 195], [310, 140], [315, 225]], float))]


def _driver():
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) or shutil.which(p))]
  if missing:
    pytest.fail(f"{', '.join(missing)} not found: this test needs Debian's Chromium "
                f"(apt-get install chromium chromium-driver)")
  try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
  except ImportError:
    pytest.fail("selenium is not installed: pip install selenium (the test extra)")
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ARGS:
    options.add_argument(arg)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


VAE_ID = "vae&co"


def untrained_vae(workdir: str) -> str:
  """A freshly initialised tiny VAE as a workdir: the page's VAE controls need an encoder,
  not a good one."""
  cfg = config_lib.PRESETS["original"].replace(enc_rnn_size=16, dec_rnn_size=32, z_size=8,
                                               num_mixture=3, max_seq_len=60)
  checkpoint.save_run_files(workdir, cfg, data.DataFacts(scale_factor=20.0, max_seq_len=60))
  ckpts = checkpoint.Checkpoints(workdir)
  ckpts.save_latest(0, jax.device_get(train.create_state(cfg, jax.random.key(0)))._asdict())
  ckpts.close()
  return workdir


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
  # The model id is the folder's name; '&' checks that the SVG download escapes it.
  vae = untrained_vae(str(tmp_path_factory.mktemp("runs") / VAE_ID))
  models = serving.load_models([vae], bundled=["cat", "pig"],
                               cache_dir=str(tmp_path_factory.mktemp("models")))
  service = serving.Service(models, default="cat")
  service.warm_up()
  server = serve.Server(("127.0.0.1", 0), service)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield server.url
  server.shutdown()
  server.server_close()


@pytest.fixture(scope="module")
def browser():
  driver = _driver()
  yield driver
  driver.quit()


def draw(driver, kind: str, points_px: np.ndarray) -> None:
  """One stroke of synthetic pointer events (W3C actions) at canvas px positions."""
  from selenium.webdriver.common.actions import interaction
  from selenium.webdriver.common.actions.action_builder import ActionBuilder
  from selenium.webdriver.common.actions.pointer_input import PointerInput
  rect = driver.execute_script("const r = document.getElementById('pad').getBoundingClientRect();"
                               "return [r.left, r.top, r.width];")
  at = [(round(rect[0] + x * rect[2] / 480), round(rect[1] + y * rect[2] / 480))
        for x, y in points_px]
  pointer = PointerInput(getattr(interaction, f"POINTER_{kind.upper()}"), kind)
  actions = ActionBuilder(driver, mouse=pointer, duration=5)
  actions.pointer_action.move_to_location(*at[0]).pointer_down()
  for x, y in at[1:]:
    actions.pointer_action.move_to_location(x, y)
  actions.pointer_action.pointer_up()
  actions.perform()


def wait_for(driver, condition, timeout: float = 60.0):
  """Until a script (or a Python callable) returns something true."""
  from selenium.webdriver.support.ui import WebDriverWait
  check = condition if callable(condition) else lambda d: d.execute_script(condition)
  return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: check(d))


def ink(driver, selector: str) -> list[dict]:
  """Counts of dark and red pixels in each canvas matching `selector`."""
  return driver.execute_script("""
    return [...document.querySelectorAll(arguments[0])].map((c) => {
      const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let dark = 0, red = 0;
      for (let i = 0; i < px.length; i += 4) {
        if (px[i] < 90 && px[i + 1] < 90 && px[i + 2] < 90) dark++;
        if (px[i] > 150 && px[i + 1] < 110 && px[i + 2] < 110) red++;
      }
      return {dark, red};
    });""", selector)


def simplified(lines, scale):
  """The drawing as the Quick Draw files were made: data px, RDP epsilon 2, whole pixels."""
  return [np.round(rdp.rdp(np.asarray(line) * scale, epsilon=2.0)) / scale for line in lines]


def select(driver, element_id: str, value: str) -> None:
  driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                        "e.dispatchEvent(new Event('input'));", element_id, value)


def open_page(driver, url: str) -> None:
  driver.get(url)
  wait_for(driver, "return document.body.dataset.ready === 'true'", 30)


def click_and_wait(driver, button_id: str, state: str = "done") -> dict:
  driver.find_element("id", button_id).click()
  wait_for(driver, f"return document.getElementById('results').dataset.state === '{state}'")
  return driver.execute_script("return window.sketchApp.lastResponse()")


def test_draw_and_let_the_model_finish(page_url, browser):
  open_page(browser, page_url + "?seed=2")  # the same picture every run
  assert browser.execute_script("return getComputedStyle(document.getElementById('pad'))"
                                ".touchAction") == "none"

  # Drawings from nothing, from the pig: the model menu reaches the server.
  select(browser, "model", "pig")
  assert "decoder-only" in browser.find_element("id", "model-info").text
  assert not browser.find_element("id", "latent-row").is_displayed()  # no latent to choose
  answer = click_and_wait(browser, "sample")
  assert answer["model"] == "pig" and len(answer["results"]) == 4

  # Draw with a mouse, a pen and a finger; the page records each as one stroke.
  select(browser, "model", "cat")
  select(browser, "temperature", "0.45")
  for kind, points in STROKES:
    draw(browser, kind, points)
  recorded = browser.execute_script("return window.sketchApp.strokes()")
  assert len(recorded) == len(STROKES)
  for got, (kind, points) in zip(recorded, STROKES):
    got = np.asarray(got)
    assert len(got) >= 0.8 * len(points), kind  # one point per move, give or take
    np.testing.assert_allclose(got[0], points[0], atol=1.5, err_msg=kind)
    np.testing.assert_allclose(got[-1], points[-1], atol=1.5, err_msg=kind)
  for button in ("reconstruct", "interpolate"):  # the cat has no encoder
    assert not browser.find_element("id", button).is_enabled()

  answer = click_and_wait(browser, "complete")
  assert answer["kind"] == "complete" and answer["model"] == "cat" and len(answer["results"]) == 4
  assert answer["seed"] == 2
  want = simplified(recorded, answer["scale"])
  assert len(answer["given"]) == len(want)
  for got, expected in zip(answer["given"], want):
    np.testing.assert_allclose(got, expected, atol=1e-3)
  shown = browser.execute_script("return [...document.querySelectorAll('figure.result')]"
                                 ".map((f) => [f.dataset.givenStrokes, f.dataset.strokes])")
  for result, (given_strokes, strokes_json) in zip(answer["results"], shown):
    assert json.loads(strokes_json) == result["strokes"]  # the panel draws this answer
    assert int(given_strokes) == result["given_strokes"] == len(STROKES)
    for got, expected in zip(result["strokes"], want):  # every ending begins with the drawing
      np.testing.assert_allclose(got, expected, atol=1e-2)

  pad = ink(browser, "#pad")[0]
  assert pad["dark"] > 500 and pad["red"] == 0
  panels = ink(browser, "figure.result canvas")
  assert len(panels) == 4 and all(p["dark"] > 100 for p in panels)
  for p, result in zip(panels, answer["results"]):
    if len(result["strokes"]) > len(STROKES):  # the model drew something: in red
      assert p["red"] > 20
  assert sum(p["red"] for p in panels) > 0

  svg = ET.fromstring(browser.execute_script("return window.sketchApp.svg(0)"))
  assert svg.tag == "{http://www.w3.org/2000/svg}svg"
  paths = svg.findall(".//{http://www.w3.org/2000/svg}path")
  assert len(paths) == len(answer["results"][0]["strokes"])

  assert browser.execute_script("return window.sketchApp.errors") == []
  severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
  assert severe == []

  SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
  image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
  image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)
  assert SCREENSHOT.stat().st_size < 300_000


def test_vae_controls_mimic_interpolate_and_download(page_url, browser, tmp_path):
  open_page(browser, page_url)
  select(browser, "model", VAE_ID)
  assert "VAE" in browser.find_element("id", "model-info").text
  draw(browser, "mouse", STROKES[0][1])
  browser.find_element("id", "keep-a").click()  # A is kept, the canvas cleared for B
  assert browser.find_element("id", "stored-a").is_displayed()
  assert browser.execute_script("return window.sketchApp.strokes()") == []
  assert ink(browser, "#thumb-a")[0]["dark"] > 50
  assert not browser.find_element("id", "interpolate").is_enabled()  # no B yet
  for kind, points in STROKES[1:]:
    draw(browser, kind, points * 1.5 - 100)
  drawn_b = browser.execute_script("return window.sketchApp.strokes()")

  select(browser, "count", "3")
  answer = click_and_wait(browser, "reconstruct")
  assert answer["kind"] == "reconstruct" and len(answer["results"]) == 3
  want = simplified(drawn_b, answer["scale"])
  for got, expected in zip(answer["given"], want):
    np.testing.assert_allclose(got, expected, atol=1e-3)

  select(browser, "latent", "encode")
  assert click_and_wait(browser, "complete")["kind"] == "complete"

  answer = click_and_wait(browser, "interpolate")
  assert answer["kind"] == "interpolate" and len(answer["results"]) == 3
  assert [r["t"] for r in answer["results"]] == [0, 0.5, 1]
  assert len(answer["given_a"]) == 1 and len(answer["given_b"]) == 2
  captions = [e.text for e in browser.find_elements("css selector", "figure.result figcaption")]
  assert captions[0].startswith("t = 0.00") and captions[-1].startswith("t = 1.00")

  # The SVG button downloads a file.
  browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                          {"behavior": "allow", "downloadPath": str(tmp_path)})
  browser.find_elements("css selector", "figure.result button")[1].click()
  wait_for(browser, lambda _: any(p.suffix == ".svg" for p in tmp_path.iterdir()), 10)
  (path,) = tmp_path.glob("*.svg")
  assert path.name.startswith("sketch_vae-") and path.name.endswith("-interpolate-2.svg")
  title = ET.parse(path).find("{http://www.w3.org/2000/svg}title").text  # well-formed XML
  assert f"model {VAE_ID}," in title
  assert browser.execute_script("return window.sketchApp.errors") == []


def test_bad_requests_show_the_servers_message(page_url, browser):
  open_page(browser, page_url)
  # A zigzag with more corners than the cat reads (130 points).
  zigzag = np.array([[20 + 3 * i, 100 + 150 * (i % 2)] for i in range(150)], float)
  draw(browser, "mouse", zigzag)
  browser.find_element("id", "complete").click()
  wait_for(browser, "return document.getElementById('results').dataset.state === 'error'")
  status = browser.find_element("id", "status")
  assert "after simplification" in status.text and "error" in status.get_attribute("class")
  assert browser.execute_script("return window.sketchApp.errors") == []
