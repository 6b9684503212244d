r"""Draw together: `python -m experiments.serve [--workdir=DIR[,DIR]] [--model=cat]
[--port=8000] [--host=127.0.0.1]` serves a page where the model finishes your drawing.

Open http://127.0.0.1:8000/ and draw; the page offers every bundled model
(--bundled, default all) and every --workdir. The JSON API behind it:
  GET  /api/models                        the models, limits and canvas size
  POST /api/complete     {model, strokes, temperature, count, scale, seed, z}
  POST /api/reconstruct  {model, strokes, temperature, count, scale, seed}      (VAEs)
  POST /api/interpolate  {model, strokes_a, strokes_b, temperature, count, scale, seed,
                          method}                                               (VAEs)
  POST /api/sample       {model, temperature, count, scale, seed}
strokes are lists of [x, y] canvas points per stroke; sketch_vae/serving.py and
canvas.py say what each field means and how drawings are converted.

Safety, as this listens on a socket: requests choose models by id from those
loaded at start and pages from a fixed list read at start, so no request reads
or writes a file; every bad request gets a 4xx with a JSON {"error": ...};
bodies must be application/json with a Content-Length of at most 256 KB; the
request line, headers and body must all arrive within --request_timeout seconds
of the connection, one deadline rather than one per packet (so a client that
trickles its request, or sends a body shorter than its Content-Length, cannot
hold a thread: it gets a 408); on a loopback address, a Host header naming
another machine is refused (DNS rebinding). Each request runs in its own daemon
thread: the compiled sampler releases the GIL, so the page stays answered while
a model samples. --workdir and --checkpoint are common.py's flags.
"""
from __future__ import annotations

import http.server
import io
import ipaddress
import json
import os
import re
import socket
import sys
import time
import traceback
from http import HTTPStatus
from urllib.parse import urlsplit

from absl import app, flags, logging

from experiments import common
from sketch_vae import canvas, serving
from sketch_vae.canvas import RequestError

flags.DEFINE_string("model", None, "The model the page opens with: a bundled name (cat, pig) or "
                    "a workdir's id (its folder name). Default: the first --workdir, else the "
                    "first bundled model.")
flags.DEFINE_list("bundled", None, "Bundled models to offer (default: all; --bundled= for none).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; 127.0.0.1 keeps it on this "
                    "machine.")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).")
flags.DEFINE_string("cache_dir", None, "Where bundled models are imported as workdirs "
                    "(default ~/.cache/sketch_vae/models).")
flags.DEFINE_float("request_timeout", 10.0, "Seconds a client gets, from connecting, to send "
                   "its whole request: request line, headers and body.")
flags.DEFINE_bool("log_requests", True, "Print one line per request.")
FLAGS = flags.FLAGS

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
POST_API = {f"/api/{name}": name for name in serving.ENDPOINTS}
# Everything the page loads comes from this server: no CDN, no inline script.
CSP = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# The lingering close after a refused body (Handler.finish): long enough for a client to read
# our answer, bounded in time as well as bytes so that a trickling client cannot keep it going.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024


class HttpError(Exception):
  def __init__(self, status: int, message: str, headers=()):
    super().__init__(message)
    self.status, self.headers = status, dict(headers)


def read_assets(web_dir: str = serving.WEB_DIR) -> dict[str, tuple[bytes, str]]:
  """The page's files, read once at start: {url path: (bytes, content type)}."""
  out = {}
  for path, (name, ctype) in STATIC.items():
    with open(os.path.join(web_dir, name), "rb") as f:
      out[path] = (f.read(), ctype)
  return out


def _byte_count(text: str):
  """Content-Length as an int; None unless it is ASCII digits (int() takes '²' and '1_0',
  and refuses more than 4300 digits); 10**15 stands for anything longer than 15 digits."""
  if not re.fullmatch(r"[0-9]+", text or ""):
    return None
  return int(text) if len(text) <= 15 else 10**15


def _is_loopback(host: str) -> bool:
  try:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


class _DeadlineReader(io.RawIOBase):
  """The socket's receiving side against one deadline for the whole request. A socket
  timeout bounds each receive only, so a client sending a byte or a header line just
  inside it could keep a thread forever; here each receive waits only for what is left."""

  def __init__(self, sock: socket.socket, deadline: float):
    super().__init__()
    self.sock, self.deadline = sock, deadline
    self.received, self.timed_out = 0, False

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    left = self.deadline - time.monotonic()
    try:
      if left <= 0:
        raise TimeoutError("the request did not arrive in time")
      self.sock.settimeout(left)
      count = self.sock.recv_into(buffer)
    except TimeoutError:
      self.timed_out = True  # Handler.handle_one_request answers 408 for the headers
      raise
    self.received += count
    return count


class Server(http.server.ThreadingHTTPServer):
  """A threading HTTP server holding the service; one daemon thread per request."""
  daemon_threads = True
  request_queue_size = 64

  def __init__(self, address, service: serving.Service, *, request_timeout: float = 10.0,
               log_requests: bool = False):
    self.service, self.request_timeout, self.log_requests = service, request_timeout, log_requests
    self.assets = read_assets()
    self.loopback_only = _is_loopback(address[0])
    if ":" in address[0]:
      self.address_family = socket.AF_INET6
    super().__init__(address, Handler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


class Handler(http.server.BaseHTTPRequestHandler):
  server_version = "sketch_vae-serve"
  unread_body = 0  # bytes a client announced that were never read (see finish)
  linger = False  # close as finish says: the client may still be sending
  answered = False  # a response was begun: a later timeout must not start another

  def setup(self):
    self.timeout = self.server.request_timeout  # StreamRequestHandler applies it to the socket
    super().setup()
    # setup runs as the connection's thread starts, just after accept: the whole request
    # (request line, headers, body) is read against this one deadline.
    self.rfile.close()  # the plain socket file, replaced before anything is read from it
    self.reader = _DeadlineReader(self.connection, time.monotonic() + self.server.request_timeout)
    self.rfile = io.BufferedReader(self.reader)

  def handle_one_request(self):
    """http.server closes a connection whose request line or headers time out without a
    word; a client that sent part of a request gets a 408 instead, as the README promises
    slow clients. One that sent nothing (e.g. a browser's unused preconnection) is closed."""
    # What _send and the request log read, should the request line never arrive.
    self.command, self.requestline, self.request_version = "", "", "HTTP/0.9"
    super().handle_one_request()
    if self.reader.timed_out and self.reader.received and not self.answered:
      self.linger = True  # it may still be trickling its headers
      self._send(408, _error_json(
          f"the request line and headers did not arrive within "
          f"{self.server.request_timeout:g} s"), "application/json", {})

  def __getattr__(self, name):
    """Any other method (PUT, DELETE, OPTIONS, BREW...) gets a 405, where
    BaseHTTPRequestHandler would answer 501."""
    if name.startswith("do_"):
      return self._dispatch
    raise AttributeError(name)

  def do_GET(self):
    self._dispatch()

  def do_HEAD(self):
    self._dispatch()

  def do_POST(self):
    self._dispatch()

  def _dispatch(self):
    self.unread_body = _byte_count(self.headers.get("Content-Length")) or 0
    try:
      self._send(*self._route())
      return
    except HttpError as e:
      status, message, headers = e.status, str(e), e.headers
    except RequestError as e:
      status, message, headers = 400, str(e), {}
    except Exception as e:  # a bug, not a bad request: say so, keep serving
      traceback.print_exc()
      status, message, headers = 500, f"internal error: {e}", {}
    self._send(status, _error_json(message), "application/json", headers)

  def _route(self):
    path = urlsplit(self.path).path
    if not self._host_allowed():
      raise HttpError(403, f"Host {self.headers.get('Host')!r} is not this server's name "
                      f"(use {self.server.url})")
    allowed = ("GET, HEAD" if path in STATIC or path == "/api/models" else
               "POST" if path in POST_API else None)
    if allowed is None:
      raise HttpError(404, f"no page or endpoint {path}; the API is GET /api/models and "
                      f"POST {', '.join(POST_API)}")
    if self.command not in allowed.split(", "):
      raise HttpError(405, f"{path} takes {allowed}, not {self.command}", {"Allow": allowed})
    if path in STATIC:
      return (200, *self.server.assets[path], {"Content-Security-Policy": CSP})
    if path == "/api/models":
      return 200, _json(self.server.service.describe()), "application/json", {}
    body = canvas.parse_body(self._read_body())
    answer = getattr(self.server.service, POST_API[path])(body)
    return 200, _json(answer), "application/json", {}

  def _host_allowed(self) -> bool:
    host = self.headers.get("Host")
    if not self.server.loopback_only or not host:
      return True
    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name.lower() in LOOPBACK_NAMES

  def _read_body(self) -> bytes:
    """The body, checked before it is read; read against the request's deadline (the
    reader's), so headers and body together get --request_timeout, not each packet."""
    ctype = self.headers.get("Content-Type", "")
    length = self.headers.get("Content-Length")
    if ctype.split(";")[0].strip().lower() != "application/json":
      raise HttpError(415, f"send the body as Content-Type: application/json, not {ctype!r}")
    if self.headers.get("Transfer-Encoding"):
      raise HttpError(411, "chunked bodies are not accepted: send a Content-Length")
    if length is None:
      raise HttpError(411, "a Content-Length header is required")
    size, limit = _byte_count(length.strip()), self.server.service.limits.max_body_bytes
    if size is None:
      raise HttpError(400, f"Content-Length {length!r} is not a byte count")
    if size > limit:
      shown = size if size < 10**15 else "over 10^15"
      raise HttpError(413, f"the body is {shown} bytes; at most {limit} are accepted")
    chunks, got = [], 0
    while got < size:
      try:
        chunk = self.rfile.read1(size - got)
      except TimeoutError:
        self.unread_body = 0
        raise HttpError(408, f"the body stopped after {got} of its {size} bytes "
                        f"(Content-Length); the whole request must arrive within "
                        f"{self.server.request_timeout:g} s") from None
      if not chunk:
        self.unread_body = 0
        raise HttpError(400, f"the body ended after {got} of its {size} bytes (Content-Length)")
      chunks.append(chunk)
      got += len(chunk)
    self.unread_body = 0
    return b"".join(chunks)

  def _send(self, status: int, body: bytes, ctype: str, headers: dict) -> None:
    self.close_connection, self.answered = True, True
    # The deadline is for what the client sends; the last read left the socket with what
    # remained of it, maybe nothing, so writing gets the whole timeout again, per send.
    self.connection.settimeout(self.server.request_timeout)
    if self.request_version == "HTTP/0.9":  # a request line http.server could not parse:
      self.request_version = "HTTP/1.0"  # answer with a status line all the same
    try:
      self.send_response(status)
      self.send_header("Content-Type", ctype)
      self.send_header("Content-Length", str(len(body)))
      self.send_header("Cache-Control", "no-store")
      self.send_header("X-Content-Type-Options", "nosniff")
      self.send_header("Referrer-Policy", "no-referrer")
      for name, value in headers.items():
        self.send_header(name, value)
      self.send_header("Connection", "close")
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
      pass  # the client has gone, or stopped reading for request_timeout

  def send_error(self, code, message=None, explain=None):
    """http.server's own errors (a malformed request line, headers too long) as JSON;
    an unsupported HTTP version is the client's error too (400, not 505)."""
    code = 400 if code >= 500 else code
    text = message or HTTPStatus(code).phrase
    self.linger = True  # e.g. a request line or headers too long, read only in part
    self._send(code, _error_json(text), "application/json", {})

  def finish(self):
    """Lingering close: a client whose body was refused unread (413, 415...) is still
    sending it; closing now would reset the connection and could lose our answer. It ends
    at the client's close, 1 s of silence, LINGER_BYTES or LINGER_SECONDS, whichever
    comes first: a per-receive timeout alone would let a byte every 0.9 s hold the thread."""
    if self.unread_body or self.linger:
      try:
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        stop, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
        while left > 0:
          wait = stop - time.monotonic()
          if wait <= 0:
            break
          self.connection.settimeout(min(1.0, wait))
          chunk = self.connection.recv(min(left, 65536))
          if not chunk:
            break
          left -= len(chunk)
      except OSError:
        pass
    super().finish()

  def log_message(self, format, *args):
    if self.server.log_requests:
      sys.stderr.write(f"{self.address_string()} {format % args}\n")


def _json(value) -> bytes:
  return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _error_json(message: str) -> bytes:
  return _json({"error": message})


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores
  with common.clean_errors():
    workdirs = [w for w in (FLAGS.workdir or "").split(",") if w]
    models = serving.load_models(workdirs, bundled=FLAGS.bundled, cache_dir=FLAGS.cache_dir,
                                 which=FLAGS.checkpoint)
    service = serving.Service(models, default=FLAGS.model)
    print(f"compiling the samplers of {', '.join(models)}...", flush=True)
    for model_id, seconds in service.warm_up().items():
      print(f"  {model_id}: {seconds:.1f} s", flush=True)
    server = Server((FLAGS.host, FLAGS.port), service, request_timeout=FLAGS.request_timeout,
                    log_requests=FLAGS.log_requests)
  print(f"serving on {server.url} (Ctrl+C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  app.run(main)
