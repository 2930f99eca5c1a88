"""`experiments.serve`: the HTTP API against the `Segmenter` called directly, every refusal of a
bad upload (the server keeps answering), the limits under overload, a bounded load test, the
page driven by a real headless browser, and the CLI itself.

The servers run in-process on loopback port 0 over a random 16 px segmenter (tests/tiny_world.py).
Expected pictures are computed here from the direct call's alpha with the documented formulas
(mask = 255 where alpha > threshold; matte = round(255 alpha); cut-out = RGB + matte), never with
the server's own encoder.
"""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from l4f_jax import Segmenter
from l4f_jax.config import resolve
from l4f_jax.programs.serve import ServeConfig, Server
from tests.tiny_world import ROOT, cli_env, make_segmenter_dir

THRESHOLD = 0.5  # make_segmenter_dir's


def _png(rgb: np.ndarray, mode: str = "PNG") -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, mode)
  return buf.getvalue()


def _photo(h: int, w: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  yy, xx = np.mgrid[:h, :w]
  blob = (yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2 < 1
  base[blob] = base[blob] // 4 + 180  # a bright object on noise: both classes present
  return base


def _expected(seg: Segmenter, rgb: np.ndarray, kind: str, fit: str) -> np.ndarray:
  alpha = np.clip(seg(rgb, fit=fit), 0.0, 1.0)
  soft = np.floor(alpha.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)
  if kind == "mask":
    return np.where(alpha > THRESHOLD, 255, 0).astype(np.uint8)
  if kind == "alpha":
    return soft
  return np.concatenate([rgb, soft[..., None]], axis=-1)


def _decoded(body: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(body)) as im:
    assert im.format == "PNG"
    return np.asarray(im)


def _post(url: str, body: bytes, query: str = "", ctype: str | None = "image/png",
          timeout: float = 60.0):
  """(status, headers, body) of one POST /api/segment on a fresh connection."""
  host, port = url.split("//")[1].strip("/").split(":")
  conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
  headers = {"Content-Type": ctype} if ctype else {}
  try:
    conn.request("POST", "/api/segment" + query, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()
  finally:
    conn.close()


def _get(url: str, path: str):
  host, port = url.split("//")[1].strip("/").split(":")
  conn = http.client.HTTPConnection(host, int(port), timeout=30)
  try:
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()
  finally:
    conn.close()


def _start(server: Server) -> Server:
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  base = tmp_path_factory.mktemp("serve")
  seg_dir = make_segmenter_dir(str(base / "seg"), size=16)
  seg = Segmenter.load(seg_dir, batch=2)
  cfg = resolve(ServeConfig, segmenter=seg_dir, port=0, batch=2, max_upload_mb=0.5,
                max_pixels=1_000_000, timeout_s=30)
  server = _start(Server(cfg))
  yield {"seg": seg, "seg_dir": seg_dir, "server": server, "url": server.url, "base": base}
  server.close()


# ------------------------------------------------------------------------------------------------
# The batching queue


def test_batch_queue_shares_calls_and_survives_errors():
  from l4f_jax.system.batching import BatchQueue, QueueFull  # pylint: disable=import-outside-toplevel
  calls, gate, entered = [], threading.Event(), threading.Event()

  def fn(items):
    calls.append(list(items))
    if len(calls) == 1:
      entered.set()
      assert gate.wait(30)
    if "boom" in items:
      raise ValueError("boom")
    return [x * 10 for x in items]

  q = BatchQueue(fn, max_batch=4, max_wait_s=0.0, max_queue=6)
  try:
    first = q.submit(1)
    assert entered.wait(30)                     # the worker is inside fn with [1]
    futures = [q.submit(x) for x in (2, 3, 4, 5, 6)]
    dropped = q.submit(7)
    assert dropped.cancel()                     # its caller gave up: never computed
    with pytest.raises(QueueFull):
      q.submit(8)                               # six items wait
    gate.set()
    assert [f.result(30) for f in [first] + futures] == [10, 20, 30, 40, 50, 60]
    assert calls == [[1], [2, 3, 4, 5], [6]]    # the waiting items shared one call
    bad, good = q.submit("boom"), None
    with pytest.raises(ValueError, match="boom"):
      bad.result(30)
    good = q.submit(9)
    assert good.result(30) == 90                # the worker carries on
    assert q.stats() == {"batches": 4, "items": 7, "largest_batch": 4, "failed_batches": 1}
  finally:
    gate.set()
    q.close()


# ------------------------------------------------------------------------------------------------
# (a) The API


def test_info_describes_the_model_and_limits(world):
  status, headers, body = _get(world["url"], "/api/info")
  info = json.loads(body)
  assert status == 200 and headers["Content-Type"] == "application/json"
  assert (info["size"], info["threshold"], info["fit"]) == (16, THRESHOLD, "pad")
  assert info["limits"]["max_upload_bytes"] == 2 ** 19 and info["limits"]["max_pixels"] == 10 ** 6
  assert info["fingerprint"] == world["seg"].model.fingerprint


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_every_output_equals_the_direct_call(world, fit):
  seg = world["seg"]
  for k, (h, w) in enumerate([(23, 41), (40, 17), (16, 16)]):
    rgb = _photo(h, w, seed=k)
    for kind, mode in (("mask", "L"), ("alpha", "L"), ("cutout", "RGBA")):
      query = "" if (kind, fit) == ("mask", "pad") else f"?output={kind}&fit={fit}"
      status, headers, body = _post(world["url"], _png(rgb), query)
      assert status == 200 and headers["Content-Type"] == "image/png", body[:300]
      assert headers["X-Image-Size"] == f"{w}x{h}"
      with Image.open(io.BytesIO(body)) as im:
        assert (im.mode, im.size) == (mode, (w, h))  # the image's own size
      np.testing.assert_array_equal(_decoded(body), _expected(seg, rgb, kind, fit))
  mask = _decoded(_post(world["url"], _png(_photo(30, 20, 9)))[2])
  assert set(np.unique(mask)) <= {0, 255}


def test_jpeg_and_octet_stream_uploads(world):
  rgb = _photo(33, 21, seed=5)
  jpeg = _png(rgb, "JPEG")
  with Image.open(io.BytesIO(jpeg)) as im:
    decoded = np.asarray(im.convert("RGB"))  # what any JPEG reader gives
  for ctype in ("image/jpeg", "application/octet-stream", "image/png; charset=binary"):
    status, _, body = _post(world["url"], jpeg, "?output=alpha", ctype=ctype)
    assert status == 200, body
    np.testing.assert_array_equal(_decoded(body), _expected(world["seg"], decoded, "alpha", "pad"))


def _bomb() -> bytes:
  """A 4000 x 4000 1-bit PNG: 16 MP (over the fixture's 1 MP limit) in about 2 KB."""
  buf = io.BytesIO()
  Image.new("1", (4000, 4000)).save(buf, "PNG")
  assert len(buf.getvalue()) < 20_000
  return buf.getvalue()


def _bad_uploads() -> list:
  good = _png(_photo(20, 30, 1))
  return [  # (what, body, query, content type, status, text of the error)
      ("not an image", b"hello, I am text\n" * 10, "", "image/png", 422, "unreadable image"),
      ("truncated png", good[:len(good) // 2], "", "image/png", 422, "unreadable image"),
      ("too big", b"\0" * (2 ** 19 + 1), "", "image/png", 413, "over the limit of 524288"),
      ("zero bytes", b"", "", "image/png", 400, "empty"),
      ("decompression bomb", _bomb(), "", "image/png", 413, "over the limit of 1 MP"),
      ("wrong content type", good, "", "text/plain", 415, "Content-Type text/plain"),
      ("form post", good, "", "application/x-www-form-urlencoded", 415, "Content-Type"),
      ("no content type", good, "", None, 415, "Content-Type none"),
      ("unknown output", good, "?output=matte", "image/png", 400, "output='matte'"),
      ("unknown fit", good, "?fit=zoom", "image/png", 400, "fit='zoom'"),
      ("unknown parameter", good, "?size=64", "image/png", 400, "unknown parameter"),
  ]


@pytest.mark.parametrize("case", range(len(_bad_uploads())),
                         ids=[c[0] for c in _bad_uploads()])
def test_bad_upload_gets_a_clear_4xx_and_the_server_carries_on(world, case):
  what, body, query, ctype, want, text = _bad_uploads()[case]
  status, headers, answer = _post(world["url"], body, query, ctype)
  assert status == want, (what, status, answer[:300])
  assert headers["Content-Type"] == "application/json"
  error = json.loads(answer)
  assert text in error["error"] and error["status"] == want and "\n" not in error["error"], error
  rgb = _photo(12, 18, seed=case)
  status, _, body = _post(world["url"], _png(rgb))  # still answering, correctly
  assert status == 200
  np.testing.assert_array_equal(_decoded(body), _expected(world["seg"], rgb, "mask", "pad"))


def _raw(url: str, data: bytes, shut: bool = True, timeout: float = 30) -> bytes:
  """Sends raw bytes, optionally half-closes, returns everything the server answers."""
  host, port = url.split("//")[1].strip("/").split(":")
  with socket.create_connection((host, int(port)), timeout=timeout) as s:
    s.sendall(data)
    if shut:
      s.shutdown(socket.SHUT_WR)
    chunks = []
    while True:
      chunk = s.recv(65536)
      if not chunk:
        return b"".join(chunks)
      chunks.append(chunk)


def test_protocol_refusals(world):
  url = world["url"]
  head = "POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
  short = _raw(url, (head + "Content-Length: 100\r\n\r\n").encode() + b"x" * 10)
  assert short.startswith(b"HTTP/1.1 400") and b"ended after 10 of 100 bytes" in short, short
  chunked = _raw(url, (head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                 .encode())
  assert chunked.startswith(b"HTTP/1.1 411"), chunked
  bad_length = _raw(url, (head + "Content-Length: -5\r\n\r\n").encode())
  assert bad_length.startswith(b"HTTP/1.1 400") and b"not a byte count" in bad_length
  expect = _raw(url, (head + f"Content-Length: {2 ** 30}\r\nExpect: 100-continue\r\n\r\n")
                .encode(), shut=False)  # refused before `100 Continue`: no body is sent
  assert expect.startswith(b"HTTP/1.1 413") and b"100 Continue" not in expect, expect
  assert _get(url, "/api/segment")[0] == 405 and _get(url, "/nope")[0] == 404
  status, headers, page = _get(url, "/")
  assert status == 200 and headers["Content-Type"].startswith("text/html")
  assert not re.search(rb"(src|href)=\"(https?:)?//", page)  # nothing from the network
  assert _post(url, _png(_photo(9, 9, 0)))[0] == 200


# ------------------------------------------------------------------------------------------------
# Limits under overload: a segmenter that waits until the test lets it go


class _Held:
  """The real segmenter behind a gate: calls after the first (the warm-up) wait for `go`."""

  def __init__(self, seg):
    self.seg, self.size, self.threshold = seg, seg.size, seg.threshold
    self.go, self.entered, self.calls = threading.Event(), threading.Event(), 0

  def __call__(self, images, fit=None):
    self.calls += 1
    if self.calls > 1:
      self.entered.set()
      assert self.go.wait(60)
    return self.seg(images, fit=fit)


def _until(cond, seconds: float = 30.0):
  end = time.monotonic() + seconds
  while not cond():
    assert time.monotonic() < end, "timed out"
    time.sleep(0.01)


def test_overload_answers_503_and_recovers(world):
  held = _Held(world["seg"])
  server = _start(Server(resolve(ServeConfig, segmenter="unused", port=0, batch=1, max_queue=1,
                                 max_connections=3, timeout_s=60), segmenter=held))
  try:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      photos = [_photo(14, 22, seed=s) for s in (1, 2)]
      first = pool.submit(_post, server.url, _png(photos[0]))
      _until(held.entered.is_set)                                   # the device call is busy
      second = pool.submit(_post, server.url, _png(photos[1]))
      _until(lambda: server.info()["stats"]["waiting"] == 1)        # one picture waits
      status, headers, body = _post(server.url, _png(photos[0]))
      assert status == 503 and "--max_queue" in json.loads(body)["error"]
      assert headers["Retry-After"] == "1"
      host, port = server.url.split("//")[1].strip("/").split(":")
      with socket.create_connection((host, int(port))) as slow:     # holds the third slot
        slow.sendall(b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        _until(lambda: server.info()["stats"]["uploads_in_progress"] == 3)
        status, _, body = _post(server.url, _png(photos[0]))
        assert status == 503 and "--max_connections" in json.loads(body)["error"]
      held.go.set()
      for future, rgb in ((first, photos[0]), (second, photos[1])):
        status, _, body = future.result(timeout=60)
        assert status == 200
        np.testing.assert_array_equal(_decoded(body), _expected(world["seg"], rgb, "mask", "pad"))
    assert _post(server.url, _png(photos[1]))[0] == 200
    assert server.info()["stats"]["answers"]["503"] == 2
  finally:
    held.go.set()
    server.close()


def test_timeouts(world):
  held = _Held(world["seg"])
  server = _start(Server(resolve(ServeConfig, segmenter="unused", port=0, timeout_s=1.0),
                         segmenter=held))
  try:
    t0 = time.monotonic()
    status, _, body = _post(server.url, _png(_photo(10, 10, 0)))
    assert status == 503 and "no answer within 1 s" in json.loads(body)["error"]
    assert time.monotonic() - t0 < 20
    stalled = _raw(server.url, b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Type: "
                   b"image/png\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, shut=False)
    assert stalled.startswith(b"HTTP/1.1 408"), stalled
    held.go.set()
    assert _post(server.url, _png(_photo(10, 10, 0)))[0] == 200
  finally:
    held.go.set()
    server.close()


# ------------------------------------------------------------------------------------------------
# (b) A bounded load test


def test_load_nothing_lost_every_answer_right(world, capsys):
  clients, per_client = 8, 10
  seg, url = world["seg"], world["url"]
  kinds, fits = ("mask", "alpha", "cutout"), ("pad", "stretch", "crop")
  jobs = []
  for c in range(clients):
    for i in range(per_client):
      rgb = _photo(12 + (c * 7 + i * 3) % 29, 12 + (c * 5 + i * 11) % 31, seed=100 * c + i)
      kind, fit = kinds[(c + i) % 3], fits[(c + 2 * i) % 3]
      jobs.append((c, rgb, kind, fit, _expected(seg, rgb, kind, fit)))
  before = world["server"].queue.stats()
  host, port = url.split("//")[1].strip("/").split(":")

  def client(c):
    conn = http.client.HTTPConnection(host, int(port), timeout=120)  # keep-alive
    out = []
    for _, rgb, kind, fit, _ in [j for j in jobs if j[0] == c]:
      t0 = time.perf_counter()
      conn.request("POST", f"/api/segment?output={kind}&fit={fit}", body=_png(rgb),
                   headers={"Content-Type": "image/png"})
      r = conn.getresponse()
      body = r.read()
      out.append((r.status, body, time.perf_counter() - t0))
    conn.close()
    return out

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    per_client_answers = list(pool.map(client, range(clients)))
  wall = time.perf_counter() - t0
  answers = [a for per in per_client_answers for a in per]
  assert len(answers) == clients * per_client
  for c, got in enumerate(per_client_answers):
    for (status, body, _), job in zip(got, [j for j in jobs if j[0] == c], strict=True):
      assert status == 200, body[:300]
      np.testing.assert_array_equal(_decoded(body), job[4])
  after = world["server"].queue.stats()
  items = after["items"] - before["items"]
  batches = after["batches"] - before["batches"]
  assert items == clients * per_client  # every picture went through the queue once
  lat = np.array([a[2] for a in answers]) * 1000
  with capsys.disabled():
    print(f"\n[serve load test] {clients} clients x {per_client} requests: "
          f"{len(answers) / wall:.1f} requests/s, p50 {np.percentile(lat, 50):.1f} ms, "
          f"p99 {np.percentile(lat, 99):.1f} ms, {batches} device batches "
          f"(mean {items / max(batches, 1):.2f} pictures, largest {after['largest_batch']}), "
          "0 failed, 0 wrong")


# ------------------------------------------------------------------------------------------------
# (c) The page in a real headless browser


def _browser():
  """Headless Debian chromium through chromedriver; skipped (with the reason) only outside CI."""
  chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                   "google-chrome"))), None)
  driver = shutil.which("chromedriver")
  try:
    from selenium import webdriver  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel
  except ImportError:
    webdriver = None
  missing = [n for n, v in (("chromium", chromium), ("chromedriver", driver),
                            ("selenium", webdriver)) if v is None]
  if missing:
    why = (f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; "
           "pip install -r requirements-test.txt)")
    if os.environ.get("CI"):
      pytest.fail(f"CI must run the browser test: {why}")
    pytest.skip(why)
  opts = webdriver.ChromeOptions()
  opts.binary_location = chromium
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
    opts.add_argument(arg)
  return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


_PIXELS_JS = """
const img = document.querySelector(`.row[data-name="${arguments[0]}"] img.mask`);
const c = document.createElement("canvas");
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext("2d");
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
const grey = [];
for (let i = 0; i < d.length; i += 4) grey.push(d[i]);
return [c.width, c.height, grey];
"""

_DOWNLOAD_JS = """
const done = arguments[arguments.length - 1];
const a = document.querySelector(`.row[data-name="${arguments[0]}"] a.${arguments[1]}`);
fetch(a.href).then(r => r.arrayBuffer()).then(buf => {
  let s = ""; for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
  done([a.download, btoa(s)]);
}).catch(e => done(["failed: " + e, ""]));
"""

_DROP_JS = """
const bytes = Uint8Array.from(atob(arguments[0]), ch => ch.charCodeAt(0));
const dt = new DataTransfer();
dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
document.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
"""


def test_the_page_in_a_headless_browser(world, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=import-outside-toplevel
  driver = _browser()
  seg = world["seg"]
  photo, dropped = _photo(23, 41, seed=3), _photo(37, 19, seed=4)
  (tmp_path / "photo.png").write_bytes(_png(photo))
  (tmp_path / "notes.png").write_text("not a picture\n")
  try:
    driver.set_script_timeout(30)
    driver.get(world["url"])
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#fit option")) == 3)
    assert "16 px" in driver.find_element(By.ID, "info").text
    upload = driver.find_element(By.ID, "files")
    upload.send_keys(str(tmp_path / "photo.png") + "\n" + str(tmp_path / "notes.png"))
    driver.execute_script(_DROP_JS, base64.b64encode(_png(dropped)).decode())
    states = lambda d: {e.get_attribute("data-name"): e.get_attribute("data-state")
                        for e in d.find_elements(By.CSS_SELECTOR, ".row")}
    wait.until(lambda d: set(states(d).values()) <= {"done", "error"} and len(states(d)) == 3)
    assert states(driver) == {"photo.png": "done", "notes.png": "error", "dropped.png": "done"}
    error = driver.find_element(By.CSS_SELECTOR, '.row[data-name="notes.png"] .status').text
    assert "unreadable image" in error
    for name, rgb in (("photo.png", photo), ("dropped.png", dropped)):
      w, h, grey = driver.execute_script(_PIXELS_JS, name)       # the mask as displayed
      assert (w, h) == (rgb.shape[1], rgb.shape[0])
      want = _expected(seg, rgb, "mask", "pad")
      np.testing.assert_array_equal(np.array(grey, np.uint8).reshape(h, w), want)
      cut = driver.find_element(By.CSS_SELECTOR, f'.row[data-name="{name}"] img.cutout')
      assert cut.get_attribute("naturalWidth") == str(w)
      for cls, kind in (("download-mask", "mask"), ("download-cutout", "cutout")):
        filename, data = driver.execute_async_script(_DOWNLOAD_JS, name, cls)
        assert filename == f"{name[:-4]}_{kind}.png"
        np.testing.assert_array_equal(_decoded(base64.b64decode(data)),
                                      _expected(seg, rgb, kind, "pad"))
  finally:
    driver.quit()


# ------------------------------------------------------------------------------------------------
# The CLI


def test_the_cli_serves_and_stops_on_ctrl_c(world):
  proc = subprocess.Popen([sys.executable, "-m", "experiments.serve",
                           f"--segmenter={world['seg_dir']}", "--port=0"], cwd=ROOT,
                          env=cli_env(devices=1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    line = proc.stdout.readline()
    m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
    assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
    url = m.group(1)
    assert json.loads(_get(url, "/api/info")[2])["size"] == 16
    rgb = _photo(21, 13, seed=7)
    status, _, body = _post(url, _png(rgb), "?output=alpha")
    assert status == 200
    want = _expected(world["seg"], rgb, "alpha", "pad").astype(int)  # another device count
    assert np.abs(_decoded(body).astype(int) - want).max() <= 1
  finally:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  assert err.strip().splitlines() == ["serve: error: stopped by SIGINT; nothing was written"], err
