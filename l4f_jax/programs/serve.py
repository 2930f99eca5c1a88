"""A local page and HTTP API over a trained student: `experiments.serve`.

  from l4f_jax.config import resolve
  from l4f_jax.programs.serve import ServeConfig, Server
  server = Server(resolve(ServeConfig, segmenter=DIR, port=0))   # binds, loads, warms up
  threading.Thread(target=server.serve_forever).start(); ... server.url ...; server.close()

Routes:
  GET  /               the page (`serve_page.html`: one static file, no network): choose or drop
                       images, see original / mask / cut-out side by side, download them
  GET  /api/info       JSON: the model's size, threshold, default fit, the limits, counters
  POST /api/segment    body: the image file's bytes, Content-Type image/* (or
                       application/octet-stream); answers a PNG at the image's own size:
                       ?output=mask (default; 0/255), alpha (the soft matte, round(255 alpha)) or
                       cutout (RGBA: the image with alpha as its alpha); ?fit=pad|crop|stretch
                       (default --fit). The pictures are `image_io.output_picture`'s, i.e. the
                       bytes `experiments.segment` writes for the same file.

Uploads are decoded by `image_io.read_rgb` (as `segment` reads files) in the request's thread;
the decoded pictures of concurrent requests meet in a `system.batching.BatchQueue` whose one
worker thread calls the `Segmenter` on up to batch x devices pictures at once (it waits at most
--batch_wait_ms for a batch to fill). Every refusal is a JSON `{"error": "..."}` with a 4xx
status, and the server carries on:
  400 an empty body, a body shorter than its Content-Length, an unknown route parameter
  404 / 405 an unknown path / method        408 the upload took longer than --timeout_s
  411 no Content-Length (chunked uploads)   413 a body over --max_upload_mb, or a picture over
                                                --max_pixels (checked before decoding: bombs)
  415 a Content-Type that is not an image   422 bytes that do not decode as an image
  503 (with Retry-After) --max_connections uploads in progress, --max_queue pictures waiting, or
      no answer within --timeout_s; 500 if the model fails (e.g. non-finite masks).

The standard library's `http.server.ThreadingHTTPServer` serves it. A local page for one user and
a JSON/PNG API need no routing, templating or async framework; the work that matters (one batched
device call for many requests) is the batching queue, which no WSGI/ASGI server provides either.
A serving library (uvicorn + starlette, waitress, aiohttp) would add pinned dependencies to the
runtime requirements for no feature used here; http.server is maintained with Python itself. Its
thread per connection is bounded where it matters: at most --max_connections bodies are read and
decoded at once, so memory stays within about max_connections x (max_upload + max_pixels x 3
bytes).

It binds 127.0.0.1 by default: the page has no authentication, so --host=0.0.0.0 exposes the
model to the network.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import io
import json
import os
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import numpy as np
from absl import logging

from l4f_jax.config import option
from l4f_jax.errors import UserError, one_line
from l4f_jax.io import image_io
from l4f_jax.system import batching, segmentation

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
IMAGE_TYPES = ("image/", "application/octet-stream")
READ_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  segmenter: str = segmentation.segmenter_option()
  host: str = option("127.0.0.1", "Address to listen on; 127.0.0.1 is this machine only "
                     "(0.0.0.0 exposes the unauthenticated page to the network).", nonempty=True)
  port: int = option(8000, "Port to listen on (0: a free one, printed at start).", ge=0,
                     le=65535)
  fit: str = option(segmentation.DEFAULT_FIT, "Default fit of a photo to the model's square "
                    "(?fit= overrides it per request): pad, crop or stretch.",
                    choices=image_io.FITS)
  threshold: Optional[float] = segmentation.threshold_option()
  batch: int = option(16, "Images per device per call: concurrent requests share one call of "
                      "up to batch x devices images.", ge=1)
  batch_wait_ms: float = option(5.0, "How long a request waits for others to fill its batch.",
                                ge=0, le=1000)
  max_queue: int = option(64, "Pictures waiting for the device; more get 503.", ge=1)
  max_connections: int = option(16, "Uploads read, decoded and answered at once; more get 503.",
                                ge=1)
  max_upload_mb: float = option(32.0, "Largest upload in MiB; larger bodies get 413.", gt=0)
  max_pixels: int = option(image_io.MAX_PIXELS, "Largest picture in pixels, checked before "
                           "decoding (decompression bombs); larger get 413.", ge=1)
  timeout_s: float = option(60.0, "Seconds to receive an upload (408) and to answer it (503).",
                            gt=0)


class _Refusal(Exception):
  """An HTTP error answer: status and a one-line message."""

  def __init__(self, status: int, message: str, retry_after: Optional[int] = None):
    super().__init__(message)
    self.status, self.retry_after = status, retry_after


def _listen(host: str, port: int) -> ThreadingHTTPServer:
  """The listening server (handler set later); one line for a port in use or a bad host."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET

  def handle_error(self, request, client_address):  # a request's thread failed: log, carry on
    del self, request
    logging.debug("serve: a connection from %s failed", client_address, exc_info=True)

  cls = type("_Server", (ThreadingHTTPServer,), {"daemon_threads": True, "address_family": family,
                                                  "handle_error": handle_error})
  try:
    return cls((host, port), BaseHTTPRequestHandler)
  except OSError as e:
    if e.errno == errno.EADDRINUSE:
      raise UserError(f"--port={port}: {host}:{port} is in use; stop what listens there or pass "
                      "another --port (--port=0 picks a free one)") from None
    if e.errno in (errno.EACCES, errno.EPERM):
      raise UserError(f"--port={port}: permission denied (ports below 1024 need root); pass "
                      "--port=8000 or another port above 1023") from None
    reason = e.strerror or str(e)
    raise UserError(f"--host={host}: cannot listen there ({reason}); pass an address of this "
                    "machine, e.g. --host=127.0.0.1") from None


class Server:
  """The page, the API and the batching queue over one `Segmenter` (module docstring). Tests
  may pass `segmenter` (anything with `size`, `threshold` and `__call__(images, fit=)`)."""

  def __init__(self, cfg: ServeConfig, segmenter=None):
    self.cfg = cfg
    with open(PAGE, "rb") as f:
      self.page = f.read()
    self.httpd = _listen(cfg.host, cfg.port)
    try:
      self.segmenter = segmenter if segmenter is not None else segmentation.Segmenter(
          segmentation.load_model(cfg.segmenter, cfg.batch, flag="--segmenter"), cfg.fit)
      model = getattr(self.segmenter, "model", None)
      self.fingerprint = getattr(model, "fingerprint", "")
      self.threshold = (self.segmenter.threshold if cfg.threshold is None else cfg.threshold)
      self.segmenter(np.zeros((self.segmenter.size,) * 2 + (3,), np.uint8))  # compile now
    except BaseException:
      self.httpd.server_close()
      raise
    self.queue = batching.BatchQueue(self._segment_batch,
                                     getattr(model, "step", cfg.batch),
                                     cfg.batch_wait_ms / 1000.0, cfg.max_queue)
    self.slots = threading.BoundedSemaphore(cfg.max_connections)
    self.max_upload = int(cfg.max_upload_mb * 2 ** 20)
    self._counts_lock = threading.Lock()
    self.counts: dict = {}
    self.uploads_in_progress = 0
    self._serving = threading.Event()
    self.httpd.RequestHandlerClass = _handler_class(self)

  @property
  def port(self) -> int:
    return self.httpd.server_address[1]

  @property
  def url(self) -> str:
    host = self.cfg.host if ":" not in self.cfg.host else f"[{self.cfg.host}]"
    return f"http://{host}:{self.port}/"

  def serve_forever(self) -> None:
    self._serving.set()
    try:
      self.httpd.serve_forever(poll_interval=0.2)
    finally:
      self._serving.clear()

  def close(self) -> None:
    """Stops serving (from another thread than serve_forever's, or after it returned) and closes
    the socket; requests in flight get 503 or their answer."""
    if self._serving.is_set():
      self.httpd.shutdown()
    self.httpd.server_close()
    self.queue.close(timeout=2.0)

  def _segment_batch(self, items: list) -> list:
    """[(rgb, fit)] -> [alpha]: one Segmenter call per fit present (usually one)."""
    out = [None] * len(items)
    for fit in dict.fromkeys(fit for _, fit in items):
      index = [i for i, (_, f) in enumerate(items) if f == fit]
      for i, alpha in zip(index, self.segmenter([items[i][0] for i in index], fit=fit)):
        out[i] = alpha
    return out

  def _uploads(self, delta: int) -> None:
    with self._counts_lock:
      self.uploads_in_progress += delta

  def count(self, status: int) -> None:
    with self._counts_lock:
      self.counts[str(status)] = self.counts.get(str(status), 0) + 1

  def info(self) -> dict:
    cfg = self.cfg
    with self._counts_lock:
      answers, uploads = dict(self.counts), self.uploads_in_progress
    return {"size": self.segmenter.size, "threshold": self.threshold, "fit": cfg.fit,
            "fits": list(image_io.FITS), "outputs": list(image_io.OUTPUT_KINDS),
            "fingerprint": self.fingerprint,
            "limits": {"max_upload_bytes": self.max_upload, "max_pixels": cfg.max_pixels,
                       "batch_images": self.queue.max_batch, "max_queue": cfg.max_queue,
                       "max_connections": cfg.max_connections, "timeout_s": cfg.timeout_s},
            "stats": {**self.queue.stats(), "waiting": self.queue.waiting(),
                      "uploads_in_progress": uploads, "answers": answers}}

  def segment(self, handler, query: dict) -> tuple[bytes, dict]:
    """The PNG answer of one POST /api/segment and its extra headers; raises _Refusal."""
    kind, fit = _segment_params(query, self.cfg.fit)
    length = _checked_length(handler.headers, self.max_upload)
    if not self.slots.acquire(blocking=False):
      raise _Refusal(503, f"{self.cfg.max_connections} uploads are in progress "
                     "(--max_connections); retry shortly", retry_after=1)
    self._uploads(+1)
    try:
      deadline = time.monotonic() + self.cfg.timeout_s
      body = _read_body(handler, length, deadline, self.cfg.timeout_s)
      rgb = _decode(body, self.cfg.max_pixels)
      del body
      try:
        future = self.queue.submit((rgb, fit))
      except batching.QueueFull:
        raise _Refusal(503, f"{self.cfg.max_queue} pictures are waiting for the model "
                       "(--max_queue); retry shortly", retry_after=1) from None
      try:
        alpha = future.result(timeout=max(deadline - time.monotonic(), 0.0))
      except (TimeoutError, concurrent.futures.CancelledError):
        future.cancel()
        raise _Refusal(503, f"no answer within {self.cfg.timeout_s:g} s (--timeout_s); the "
                       "server is busy, retry later", retry_after=5) from None
      except UserError as e:
        raise _Refusal(500, str(e)) from None
      array, mode = image_io.output_picture(kind, rgb, alpha, self.threshold)
      return image_io.png_bytes(array, mode), {"X-Image-Size": f"{rgb.shape[1]}x{rgb.shape[0]}"}
    finally:
      self._uploads(-1)
      self.slots.release()


def _segment_params(query: dict, default_fit: str) -> tuple[str, str]:
  unknown = sorted(set(query) - {"output", "fit"})
  if unknown:
    raise _Refusal(400, f"unknown parameter(s) {unknown}; pass ?output=mask|alpha|cutout and "
                   "?fit=pad|crop|stretch")
  kind = query.get("output", ["mask"])[-1]
  fit = query.get("fit", [default_fit])[-1]
  if kind not in image_io.OUTPUT_KINDS:
    raise _Refusal(400, f"output={kind!r}: pass one of {', '.join(image_io.OUTPUT_KINDS)}")
  if fit not in image_io.FITS:
    raise _Refusal(400, f"fit={fit!r}: pass one of {', '.join(image_io.FITS)}")
  return kind, fit


def _checked_length(headers, max_upload: int) -> int:
  """The upload's byte count from its headers (before anything is read); refuses wrong types,
  chunked or missing lengths, empty and too-large bodies."""
  ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
  if not ctype.startswith(IMAGE_TYPES):
    shown = ctype or "none"
    raise _Refusal(415, f"Content-Type {shown}: send the image file's bytes as the body with "
                   "Content-Type image/png, image/jpeg, ... (or application/octet-stream)")
  raw = headers.get("Content-Length")
  if raw is None:
    raise _Refusal(411, "no Content-Length; send the whole file as the body (not chunked)")
  try:
    length = int(raw)
  except ValueError:
    length = -1
  if length < 0:
    raise _Refusal(400, f"Content-Length {raw!r} is not a byte count")
  if length == 0:
    raise _Refusal(400, "the upload is empty (0 bytes); send an image file")
  if length > max_upload:
    raise _Refusal(413, f"the upload is {length} bytes, over the limit of {max_upload} "
                   "(--max_upload_mb); send a smaller file")
  return length


def _read_body(handler, length: int, deadline: float, timeout_s: float) -> bytes:
  chunks, got = [], 0
  while got < length:
    if time.monotonic() > deadline:
      raise _Refusal(408, f"the upload took longer than {timeout_s:g} s (--timeout_s)")
    try:
      chunk = handler.rfile.read1(min(READ_CHUNK, length - got))
    except (TimeoutError, socket.timeout):
      raise _Refusal(408, f"the upload stalled for {timeout_s:g} s (--timeout_s)") from None
    if not chunk:
      raise _Refusal(400, f"the upload ended after {got} of {length} bytes")
    chunks.append(chunk)
    got += len(chunk)
  handler.body_read = True
  return b"".join(chunks)


def _decode(body: bytes, max_pixels: int) -> np.ndarray:
  try:
    return image_io.read_rgb(io.BytesIO(body), max_pixels)
  except image_io.TooManyPixels as e:
    raise _Refusal(413, str(e).replace("the upload: ", "")) from None
  except image_io.UnreadableImage as e:
    raise _Refusal(422, str(e).replace("; replace or remove the file", "; send a PNG, JPEG, ... "
                                       "file")) from None


def _linger(conn: socket.socket, seconds: float = 2.0, cap: int = 64 << 20) -> None:
  """Half-closes `conn` and reads (and drops) what the client still sends, for a short while."""
  try:
    conn.shutdown(socket.SHUT_WR)
    end, got = time.monotonic() + seconds, 0
    while got < cap and time.monotonic() < end:
      conn.settimeout(max(end - time.monotonic(), 0.01))
      chunk = conn.recv(READ_CHUNK)
      if not chunk:
        break
      got += len(chunk)
  except OSError:
    pass


class _Handler(BaseHTTPRequestHandler):
  """The request handler (HTTP/1.1 keep-alive); `_handler_class` binds it to a Server. A refused
  upload is refused before its body is read (before `100 Continue`, for clients that wait for
  it); its connection is then closed after a lingering read, so that the kernel does not reset
  it, and discard the answer, while the client is still sending."""
  server_app: Server
  protocol_version = "HTTP/1.1"
  server_version = "l4f_jax-serve"
  body_read = False

  def _send(self, status: int, body: bytes, ctype: str, headers: Optional[dict] = None):
    self.server_app.count(status)
    if self.command == "POST" and not self.body_read:
      self.close_connection = True  # the unread body would be taken for the next request
    self.send_response(status)
    self.send_header("Content-Type", ctype)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _refuse(self, r: _Refusal):
    extra = {"Retry-After": str(r.retry_after)} if r.retry_after else {}
    body = json.dumps({"error": one_line(str(r)), "status": r.status}).encode()
    self._send(r.status, body, "application/json", extra)

  def parse_request(self):
    self.body_read = False
    return super().parse_request()

  def _route(self, method: str):
    url = urllib.parse.urlsplit(self.path)
    try:
      if url.path in ("/", "/index.html") and method in ("GET", "HEAD"):
        self._send(200, self.server_app.page, "text/html; charset=utf-8", {
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self' blob:"})
      elif url.path == "/api/info" and method in ("GET", "HEAD"):
        self._send(200, json.dumps(self.server_app.info()).encode(), "application/json")
      elif url.path == "/api/segment" and method == "POST":
        body, extra = self.server_app.segment(self, urllib.parse.parse_qs(url.query))
        self._send(200, body, "image/png", extra)
      elif url.path in ("/", "/index.html", "/api/info", "/api/segment"):
        allow = "POST" if url.path == "/api/segment" else "GET, HEAD"
        self._refuse(_Refusal(405, f"{method} {url.path}: use {allow}"))
      else:
        self._refuse(_Refusal(404, f"{url.path}: no such page; the API is POST /api/segment "
                              "and GET /api/info"))
    except _Refusal as r:
      self._refuse(r)
    except (ConnectionError, BrokenPipeError):
      self.close_connection = True  # the client left
    except Exception as e:  # pylint: disable=broad-except  # a bug: answer 500, keep serving
      logging.exception("serve: %s %s failed", method, self.path)
      self._refuse(_Refusal(500, f"internal error ({type(e).__name__}); see the server's log"))

  def handle_expect_100(self):
    if self.command == "POST" and urllib.parse.urlsplit(self.path).path == "/api/segment":
      try:
        _checked_length(self.headers, self.server_app.max_upload)
      except _Refusal as r:
        self._refuse(r)
        return False
    return super().handle_expect_100()

  def finish(self):
    super().finish()
    if self.close_connection and getattr(self, "command", None) == "POST" and \
        not self.body_read:
      _linger(self.connection)

  def do_GET(self):  # pylint: disable=invalid-name
    self._route("GET")

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._route("HEAD")

  def do_POST(self):  # pylint: disable=invalid-name
    self._route("POST")

  def do_PUT(self):  # pylint: disable=invalid-name
    self._route("PUT")

  def do_DELETE(self):  # pylint: disable=invalid-name
    self._route("DELETE")

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.debug("serve: %s " + format, self.address_string(), *args)  # --verbosity=1


def _handler_class(server: Server):
  """`_Handler` bound to `server`, with its socket timeout."""
  return type("Handler", (_Handler,), {"server_app": server, "timeout": server.cfg.timeout_s})


def serve(cfg: ServeConfig, ready=print) -> None:
  """Serves until interrupted (Ctrl-C / SIGTERM: the CLI's one line, exit 130)."""
  server = Server(cfg)
  try:
    ready(f"serving {cfg.segmenter} ({server.segmenter.size} px, threshold "
          f"{server.threshold:g}, fit {cfg.fit}) at {server.url} ; Ctrl-C stops")
    server.serve_forever()
  finally:
    server.httpd.server_close()
    server.queue.close(timeout=1.0)
