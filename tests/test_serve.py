"""The draw-together server: each endpoint over real HTTP, each kind of bad request, and a
request answered while another one samples.

Served: a tiny VAE trained for 4 steps on a few sheep (its drawings are scribbles; what is
tested is where they start and how the server behaves) and the bundled decoder-only cat,
imported into a temporary cache. experiments.serve.Server runs in a background thread on a
free port, with a 1 s request timeout so the slow-client tests are quick (and one with 2 s
where a test needs room inside the timeout).
"""
import builtins
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import rdp

from conftest import BUNDLED, REPO
from experiments import serve
from sketch_vae import canvas, config as config_lib, data, quickdraw, serving, train

# np.cross on 2-d vectors inside the `rdp` package.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MAX_LEN = 40
TINY = dict(enc_rnn_size=16, dec_rnn_size=32, z_size=8, num_mixture=3)
REQUEST_TIMEOUT = 1.0
PATIENT_TIMEOUT = 2.0
# A closed loop and a short stroke, in canvas px: it simplifies to well under MAX_LEN points
# at both models' default scales.
ANGLES = np.linspace(0.0, 2 * np.pi, 61)
LOOP = np.stack([240 + 80 * np.cos(ANGLES), 240 + 60 * np.sin(ANGLES)], 1)
DRAWING = [np.round(LOOP, 2).tolist(),
           [[200.0, 230.0], [215.5, 228.25], [230.0, 231.0]]]


@pytest.fixture(scope="session")
def sheep_workdir(tmp_path_factory) -> str:
  """A tiny VAE trained for 4 steps on 32 sheep cut to MAX_LEN points."""
  root = tmp_path_factory.mktemp("serve")
  sheep = np.load(BUNDLED / "aaron_sheep.npz", allow_pickle=True, encoding="latin1")
  small = root / "sheep.npz"
  arrays = {}
  for split, count in (("train", 32), ("valid", 4), ("test", 4)):
    arrays[split] = np.empty(count, dtype=object)
    for i in range(count):
      arrays[split][i] = sheep[split][i][:MAX_LEN]
  np.savez(small, **arrays)
  dataset = data.load(str(small), max_seq_len=MAX_LEN)
  dataset.splits["valid"] = []  # no evaluation compile
  cfg = config_lib.PRESETS["original"].replace(**TINY, batch_size=8, num_steps=4,
                                               max_seq_len=MAX_LEN, log_every=2, eval_every=4,
                                               save_every=4)
  train.fit(cfg, dataset, str(root / "sheep"))
  return str(root / "sheep")


@pytest.fixture(scope="session")
def service(sheep_workdir, tmp_path_factory):
  models = serving.load_models([sheep_workdir], bundled=["cat"],
                               cache_dir=str(tmp_path_factory.mktemp("cache")))
  service = serving.Service(models)
  service.warm_up()
  return service


def running_server(service, request_timeout):
  srv = serve.Server(("127.0.0.1", 0), service, request_timeout=request_timeout)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()


@pytest.fixture(scope="session")
def server(service):
  yield from running_server(service, REQUEST_TIMEOUT)


@pytest.fixture
def patient_server(service):
  yield from running_server(service, PATIENT_TIMEOUT)


def call(server, method, path, body=None, *, raw=None, headers=None):
  """(status, headers, decoded JSON or bytes) of one request."""
  conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
  if body is not None:
    raw = json.dumps(body).encode()
  hdrs = {"Content-Type": "application/json"} if raw is not None else {}
  hdrs.update(headers or {})
  try:
    conn.request(method, path, body=raw, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    resp_headers = {k.lower(): v for k, v in resp.getheaders()}
  finally:
    conn.close()
  if resp_headers.get("content-type", "").startswith("application/json"):
    payload = json.loads(payload)
  return resp.status, resp_headers, payload


def exchange(server, request: bytes, wait: float = 10.0) -> bytes:
  """Sends raw bytes, returns everything the server answers until it closes."""
  with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=wait) as s:
    s.sendall(request)
    chunks = []
    while True:
      chunk = s.recv(65536)
      if not chunk:
        return b"".join(chunks)
      chunks.append(chunk)


def trickle(server, pieces, every: float, give_up: float):
  """Sends pieces `every` s apart, each gap well inside the per-read timeout, until the server
  answers; returns (all it answers, seconds from connecting to its first byte), or (b"", the
  seconds waited) if nothing came within give_up s."""
  with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
    start, reply = time.monotonic(), b""
    for piece in pieces:
      s.sendall(piece)
      s.settimeout(every)
      try:
        reply = s.recv(65536)
        break
      except TimeoutError:  # no answer yet: on with the next piece
        if time.monotonic() - start > give_up:
          return b"", time.monotonic() - start
    else:
      raise AssertionError("the pieces ran out before give_up: make them more")
    took = time.monotonic() - start
    s.settimeout(10)  # the answer ends in our EOF: the server shuts its side after it
    while chunk := s.recv(65536):
      reply += chunk
  return reply, took


def simplified(lines, scale):
  """The drawing as the Quick Draw files were made, with the `rdp` package: data px,
  RDP epsilon 2 per stroke, whole pixels; back in canvas px."""
  return [np.round(rdp.rdp(np.asarray(line) * scale, epsilon=2.0)) / scale for line in lines]


def assert_error(status, headers, payload, code, words):
  assert status == code, payload
  assert headers["content-type"].startswith("application/json")
  assert words.lower() in payload["error"].lower(), payload["error"]


# ----------------------------------------------------------------------------
# Conversions.


def test_drawing_is_converted_as_quickdraw_converts_a_drawing():
  scale, scale_factor = 2.5, 40.0
  strokes, given = canvas.drawing_to_model(DRAWING, scale, scale_factor)
  drawing = quickdraw.Drawing(lines=[np.asarray(l) * scale for l in DRAWING], is_raw=False,
                              where="test")
  want = quickdraw.to_stroke3(drawing, epsilon=2.0, start_at_origin=True)
  np.testing.assert_allclose(strokes[:, 0:2] * scale_factor, want[:, 0:2], atol=1e-9)
  np.testing.assert_array_equal(strokes[:, 2], want[:, 2])
  for got, expected in zip(given, simplified(DRAWING, scale)):
    np.testing.assert_allclose(got, expected, atol=1e-9)
  back = canvas.model_to_canvas(strokes, scale, scale_factor, given[0][0])
  for got, expected in zip(back, given):
    np.testing.assert_allclose(got, expected, atol=1e-9)


# ----------------------------------------------------------------------------
# The endpoints.


def test_page_and_its_files_are_served_from_the_package(server):
  status, headers, page = call(server, "GET", "/")
  assert status == 200 and headers["content-type"].startswith("text/html")
  assert b'src="app.js"' in page and b'href="style.css"' in page
  assert "default-src 'self'" in headers["content-security-policy"]
  for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
    status, headers, body = call(server, "GET", path)
    assert status == 200 and headers["content-type"].startswith(kind) and body
    # Nothing is loaded from elsewhere: the only URL is the SVG namespace, a name.
    assert b"http" not in body.replace(b'"http://www.w3.org/2000/svg"', b"")
  assert call(server, "HEAD", "/app.js")[0] == 200


def test_models_lists_the_workdir_and_the_bundled_cat(server, service):
  status, _, out = call(server, "GET", "/api/models")
  assert status == 200
  kinds = {m["id"]: m["kind"] for m in out["models"]}
  assert kinds == {"sheep": "vae", "cat": "decoder-only"}
  cat = next(m for m in out["models"] if m["id"] == "cat")
  assert cat["scale_factor"] == pytest.approx(82.2) and cat["max_seq_len"] == 130
  assert cat["default_scale"] == pytest.approx(11 * 82.2 / (0.6 * 480), rel=1e-3)
  assert out["default"] == "sheep" and out["limits"]["max_count"] == service.limits.max_count


@pytest.mark.parametrize("model,extra", [("sheep", {}), ("sheep", {"z": "encode"}), ("cat", {}),
                                         ("cat", {"scale": 1.0})])
def test_endings_begin_exactly_with_the_simplified_drawing(server, model, extra):
  body = dict(model=model, strokes=DRAWING, count=3, temperature=0.6, seed=11, **extra)
  status, _, out = call(server, "POST", "/api/complete", body)
  assert status == 200, out
  want = simplified(DRAWING, out["scale"])
  assert len(out["given"]) == len(want)
  for got, expected in zip(out["given"], want):
    np.testing.assert_allclose(got, expected, atol=1e-3)
  assert len(out["results"]) == 3
  for result in out["results"]:
    assert result["given_strokes"] == len(DRAWING)
    # The sampler's forced rows, converted back: the drawn points, to float32 rounding.
    for got, expected in zip(result["strokes"], want):
      np.testing.assert_allclose(got, expected, atol=1e-2)
    assert result["points"] == sum(len(line) for line in result["strokes"])
    assert result["points"] <= {"sheep": MAX_LEN, "cat": 130}[model]
  endings = [json.dumps(r["strokes"][len(DRAWING):]) for r in out["results"]]
  assert len(set(endings)) > 1  # different keys, different endings
  assert call(server, "POST", "/api/complete", body)[2] == out  # the seed reproduces them


def test_reconstruct_encodes_the_drawing_and_draws_it_anew(server):
  body = dict(model="sheep", strokes=DRAWING, count=2, temperature=0.3, seed=3)
  status, _, out = call(server, "POST", "/api/reconstruct", body)
  assert status == 200, out
  assert len(out["results"]) == 2 and all(r["given_strokes"] == 0 for r in out["results"])
  for got, expected in zip(out["given"], simplified(DRAWING, out["scale"])):
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_interpolate_goes_from_a_to_b(server):
  # At 0.1 the 4-step sheep draws some 20 points; at the default 0.4 it may end at once.
  body = dict(model="sheep", strokes_a=DRAWING, strokes_b=DRAWING[:1], count=4, seed=1,
              temperature=0.1)
  status, _, out = call(server, "POST", "/api/interpolate", body)
  assert status == 200, out
  assert [r["t"] for r in out["results"]] == pytest.approx([0, 1 / 3, 2 / 3, 1])
  assert len(out["given_a"]) == 2 and len(out["given_b"]) == 1
  # References: from A to A every cell decodes z(A), and from B to B z(B), with the same
  # shared key (same seed). The walk must start at the one and end at the other, and pass
  # through something else: a walk that stayed at z(A), or jumped, would fail here.
  only_a = call(server, "POST", "/api/interpolate", dict(body, strokes_b=DRAWING))[2]
  only_b = call(server, "POST", "/api/interpolate", dict(body, strokes_a=DRAWING[:1]))[2]
  walk = [r["strokes"] for r in out["results"]]
  end_a, end_b = only_a["results"][0]["strokes"], only_b["results"][-1]["strokes"]
  assert end_a != end_b  # z matters to the decoder, so the ends tell the endpoints apart
  assert walk[0] == end_a and walk[-1] == end_b
  assert any(cell not in (end_a, end_b) for cell in walk[1:-1])


@pytest.mark.parametrize("model", ["sheep", "cat"])
def test_sample_draws_from_nothing(server, model):
  status, _, out = call(server, "POST", "/api/sample", {"model": model, "count": 5, "seed": 1})
  assert status == 200, out
  assert len(out["results"]) == 5
  assert all(r["given_strokes"] == 0 for r in out["results"])
  if model == "cat":  # the 4-step sheep may end at once
    assert all(r["points"] > 0 for r in out["results"])


def test_warm_up_leaves_nothing_to_compile(server):
  compiles = []

  def listener(event, duration, **kwargs):
    if "compile" in event:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for count in (1, 7):
      for model in ("sheep", "cat"):
        body = {"model": model, "count": count, "strokes": DRAWING}
        assert call(server, "POST", "/api/complete", body)[0] == 200
        assert call(server, "POST", "/api/sample", {"model": model, "count": count})[0] == 200
      assert call(server, "POST", "/api/reconstruct", dict(body, model="sheep"))[0] == 200
      body = {"model": "sheep", "count": max(count, 2), "strokes_a": DRAWING, "strokes_b": DRAWING}
      assert call(server, "POST", "/api/interpolate", body)[0] == 200
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []


def test_requests_read_and_write_no_files(server, monkeypatch):
  opened = []
  real_open, real_os_open = builtins.open, os.open

  def spy(real):
    return lambda file, *args, **kwargs: opened.append(file) or real(file, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", spy(real_open))
  monkeypatch.setattr(os, "open", spy(real_os_open))
  for path in ("/", "/app.js", "/api/models", "/../pyproject.toml", "/sketch_vae/serving.py"):
    call(server, "GET", path)
  for endpoint, body in (("complete", {"model": "../../etc/passwd", "strokes": DRAWING}),
                         ("complete", {"model": "sheep", "strokes": DRAWING}),
                         ("reconstruct", {"model": "sheep", "strokes": DRAWING}),
                         ("sample", {"model": "cat"})):
    call(server, "POST", f"/api/{endpoint}", body)
  assert opened == []


# ----------------------------------------------------------------------------
# Concurrency and slow clients.


def test_models_are_answered_while_a_request_samples(server, service, monkeypatch):
  entered, release, answers = threading.Event(), threading.Event(), {}
  real_draw = service._draw

  def slow_draw(*args, **kwargs):
    entered.set()
    release.wait(30)
    return real_draw(*args, **kwargs)

  monkeypatch.setattr(service, "_draw", slow_draw)
  body = {"model": "cat", "strokes": DRAWING, "count": 4}
  sampling = threading.Thread(
      target=lambda: answers.update(complete=call(server, "POST", "/api/complete", body)))
  sampling.start()
  try:
    assert entered.wait(30), "the sampling request never reached the sampler"
    status, _, out = call(server, "GET", "/api/models")
    assert status == 200 and len(out["models"]) == 2
    assert sampling.is_alive()  # still sampling while /api/models was answered
  finally:
    release.set()
    sampling.join(60)
  assert answers["complete"][0] == 200


def test_two_sampling_requests_at_once(server):
  body = {"model": "cat", "strokes": DRAWING, "count": 10, "temperature": 1.0}
  answers = []
  threads = [threading.Thread(target=lambda: answers.append(
      call(server, "POST", "/api/complete", body)[0])) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert answers == [200, 200, 200]


def test_a_body_shorter_than_its_length_times_out_and_others_are_answered(server):
  port = server.server_address[1]
  with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    s.sendall(b"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
              b"\r\nContent-Length: 100\r\n\r\n{\"model\":")
    assert call(server, "GET", "/api/models")[0] == 200  # meanwhile
    start = time.monotonic()
    reply = b""
    while chunk := s.recv(65536):
      reply += chunk
  assert reply.startswith(b"HTTP/1.0 408"), reply
  assert time.monotonic() - start < REQUEST_TIMEOUT + 5
  assert b"stopped after 9 of its 100 bytes" in reply


@pytest.mark.parametrize("pieces", [
    [bytes([c]) for c in b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"],
    [b"GET /api/models HTTP/1.1\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(40)]],
    ids=["request_line_bytes", "header_lines"])
def test_a_trickled_request_gets_a_408_at_its_deadline(server, pieces):
  # A per-read timeout answers neither: every gap is 0.3 s, and the request never ends
  # within give_up (and with 40 headers, would be answered 200 after 12 s).
  reply, took = trickle(server, pieces, 0.3 * REQUEST_TIMEOUT, REQUEST_TIMEOUT + 3)
  assert reply.startswith(b"HTTP/1.0 408"), (reply, took)
  assert b"did not arrive within 1 s" in reply
  assert REQUEST_TIMEOUT - 0.1 < took < REQUEST_TIMEOUT + 1


def test_headers_and_body_share_one_deadline(patient_server):
  # Headers end at 1.5 s, then a body byte every 0.5 s: a deadline counted afresh for the
  # body would answer at 3.5 s; the request's own deadline, from connecting, at 2 s.
  head = [b"POST /api/sample HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n",
          b"Content-Type: application/json\r\n", b"Content-Length: 100\r\n\r\n"]
  reply, took = trickle(patient_server, head + [b"{"] + [b" "] * 20, 0.5, PATIENT_TIMEOUT + 3)
  assert reply.startswith(b"HTTP/1.0 408"), (reply, took)
  assert took < PATIENT_TIMEOUT + 0.7
  assert b"of its 100 bytes" in reply and b"within 2 s" in reply


def test_a_silent_connection_is_closed_without_an_answer(server):
  # Nothing was asked (a browser's spare preconnection, say): nothing to answer 408 to.
  with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
    start = time.monotonic()
    assert s.recv(65536) == b""
    assert time.monotonic() - start < REQUEST_TIMEOUT + 1


def test_the_lingering_close_after_a_refused_body_is_capped_in_time(server):
  # The body is refused unread (415), so the server reads and drops what the client still
  # sends; a byte every 0.3 s stays inside the 1 s silence that ends it, and would keep it
  # reading for 4 MiB of them, were it not for LINGER_SECONDS.
  with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
    s.sendall(b"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
              b"Content-Length: 100000\r\n\r\n")
    reply = b""
    while chunk := s.recv(65536):  # the answer, then our EOF: the server shut its side
      reply += chunk
    assert reply.startswith(b"HTTP/1.0 415"), reply
    start, closed = time.monotonic(), None
    while time.monotonic() - start < serve.LINGER_SECONDS + 4:
      try:
        s.sendall(b"x")  # once the server has closed, the first is reset, the next fails
      except OSError:
        closed = time.monotonic() - start
        break
      time.sleep(0.3)
  assert closed is not None, "the server was still reading after LINGER_SECONDS + 4 s"
  assert closed < serve.LINGER_SECONDS + 1.5


def test_an_oversized_body_is_refused_before_it_is_read(server):
  head = (b"POST /api/complete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
          b"Content-Length: 300000\r\n\r\n")
  reply = exchange(server, head)  # the body never comes: the answer must not wait for it
  assert reply.startswith(b"HTTP/1.0 413") and b"at most 262144" in reply
  status, headers, out = call(server, "POST", "/api/complete", raw=b" " * 300_000)
  assert_error(status, headers, out, 413, "at most 262144")


# ----------------------------------------------------------------------------
# Bad requests: a 4xx with a JSON message, never a 5xx.


@pytest.mark.parametrize("method,path,code", [
    ("GET", "/api/complete", 405), ("POST", "/api/models", 405), ("PUT", "/", 405),
    ("DELETE", "/api/sample", 405), ("OPTIONS", "/api/complete", 405), ("BREW", "/", 405),
    ("GET", "/nope", 404), ("POST", "/api/nope", 404), ("GET", "/../pyproject.toml", 404),
    ("GET", "/sketch_vae/assets/web/app.js", 404), ("GET", "/%2e%2e/etc/passwd", 404)])
def test_wrong_methods_and_paths(server, method, path, code):
  body = {"model": "cat"} if method == "POST" else None
  status, headers, out = call(server, method, path, body)
  assert_error(status, headers, out, code, "POST" if code == 405 and method == "GET" else "")
  if code == 405:
    assert headers["allow"] in ("GET, HEAD", "POST")


STROKES_OK = {"model": "sheep", "strokes": DRAWING}


@pytest.mark.parametrize("endpoint,body,words", [
    ("complete", {"model": "horse", "strokes": DRAWING}, "unknown model"),
    ("complete", {"model": "../../etc/passwd", "strokes": DRAWING}, "unknown model"),
    ("complete", {"model": 3, "strokes": DRAWING}, "unknown model"),
    ("complete", dict(STROKES_OK, count=11), "'count'"),
    ("complete", dict(STROKES_OK, count=0), "'count'"),
    ("complete", dict(STROKES_OK, count="4"), "'count'"),
    ("complete", dict(STROKES_OK, count=2.5), "'count'"),
    ("complete", dict(STROKES_OK, temperature=0), "'temperature'"),
    ("complete", dict(STROKES_OK, temperature=5), "'temperature'"),
    ("complete", dict(STROKES_OK, temperature="hot"), "'temperature'"),
    ("complete", dict(STROKES_OK, temperature=True), "'temperature'"),
    ("complete", dict(STROKES_OK, scale=0), "'scale'"),
    ("complete", dict(STROKES_OK, scale=1000), "'scale'"),
    ("complete", dict(STROKES_OK, seed=-1), "'seed'"),
    ("complete", dict(STROKES_OK, temprature=0.5), "unknown field(s) 'temprature'"),
    ("complete", dict(STROKES_OK, z="mean"), "'z'"),
    ("complete", {"model": "cat", "strokes": DRAWING, "z": "encode"}, "'z'"),
    ("complete", {"model": "sheep"}, "'strokes' must be a list"),
    ("complete", {"model": "sheep", "strokes": "M 0 0 L 1 1"}, "'strokes' must be a list"),
    ("complete", {"model": "sheep", "strokes": []}, "draw something first"),
    ("complete", {"model": "sheep", "strokes": [[]]}, "stroke 0"),
    ("complete", {"model": "sheep", "strokes": [[[1, "a"]]]}, "two finite numbers"),
    ("complete", {"model": "sheep", "strokes": [[[1, 2, 3]]]}, "must be [x, y]"),
    ("complete", {"model": "sheep", "strokes": [[[True, 2]]]}, "two finite numbers"),
    ("complete", {"model": "sheep", "strokes": [[[1, None]]]}, "two finite numbers"),
    ("complete", {"model": "sheep", "strokes": [[[10**400, 2]]]}, "two finite numbers"),
    ("complete", {"model": "sheep", "strokes": [[[1e6, 2]]]}, "outside"),
    ("complete", {"model": "sheep", "strokes": [[[i % 100, 0] for i in range(10_001)]]},
     "more than 10000 points"),
    ("complete", {"model": "sheep", "strokes": [[[0, 0], [50, 0]]] * 1001}, "strokes"),
    # A zigzag keeps every corner: more points than the model reads.
    ("complete", {"model": "sheep", "strokes": [[[10 * i, 60 * (i % 2)] for i in range(45)]]},
     "after simplification"),
    ("reconstruct", {"model": "cat", "strokes": DRAWING}, "decoder-only"),
    ("interpolate", {"model": "cat", "strokes_a": DRAWING, "strokes_b": DRAWING}, "decoder-only"),
    ("interpolate", {"model": "sheep", "strokes_a": DRAWING, "strokes_b": DRAWING, "count": 1},
     "'count'"),
    ("interpolate", {"model": "sheep", "strokes_a": DRAWING}, "'strokes_b'"),
    ("interpolate", {"model": "sheep", "strokes_a": DRAWING, "strokes_b": DRAWING,
                     "method": "cubic"}, "'method'"),
    ("sample", {"model": "cat", "strokes": DRAWING}, "unknown field(s) 'strokes'"),
])
def test_bad_values_are_refused_with_a_message(server, endpoint, body, words):
  assert_error(*call(server, "POST", f"/api/{endpoint}", body), 400, words)


@pytest.mark.parametrize("raw,words", [
    (b"{", "not valid JSON"), (b'{"model": "cat", "temperature": NaN}', "NaN"),
    (b'{"temperature": Infinity}', "Infinity"), (b'{"temperature": 1e999}', "'temperature'"),
    (b"[1, 2]", "JSON object"), (b"\xff\xfe", "UTF-8"), (b"[" * 100_000, "nested too deeply"),
    (b'{"seed": ' + b"1" * 5000 + b"}", "not valid JSON"), (b"", "not valid JSON")])
def test_malformed_bodies_are_refused_with_a_message(server, raw, words):
  assert_error(*call(server, "POST", "/api/sample", raw=raw), 400, words)


@pytest.mark.parametrize("headers,code,words", [
    ({"Content-Type": "text/plain"}, 415, "application/json"),
    ({"Content-Type": ""}, 415, "application/json"),
    ({"Content-Length": "abc"}, 400, "Content-Length"),
    ({"Content-Length": "-5"}, 400, "Content-Length"),
    ({"Content-Length": "\u00b2"}, 400, "Content-Length"),
    ({"Content-Length": "1" * 5000}, 413, "at most"),
    ({"Content-Length": None}, 411, "Content-Length"),
    ({"Transfer-Encoding": "chunked", "Content-Length": None}, 411, "chunked"),
    ({"Host": "attacker.example"}, 403, "Host"),
])
def test_bad_headers_are_refused_with_a_message(server, headers, code, words):
  lines = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": "2"}
  lines.update(headers)
  head = "".join(f"{k}: {v}\r\n" for k, v in lines.items() if v is not None)
  reply = exchange(server, f"POST /api/sample HTTP/1.1\r\n{head}\r\n{{}}".encode("latin-1"))
  status_line, _, rest = reply.partition(b"\r\n")
  assert status_line.startswith(f"HTTP/1.0 {code}".encode()), reply
  assert words.lower() in json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"].lower()


@pytest.mark.parametrize("request_line", [b"GARBAGE\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n",
                                          b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"])
def test_malformed_requests_get_a_4xx(server, request_line):
  reply = exchange(server, request_line)
  code = int(reply.split(b" ", 2)[1])
  assert 400 <= code < 500, reply[:200]
  assert "error" in json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_the_server_still_answers_after_all_that(server):
  assert call(server, "GET", "/api/models")[0] == 200


# ----------------------------------------------------------------------------
# The launcher.


def test_launcher_serves_a_workdir_until_stopped(sheep_workdir):
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.serve", f"--workdir={sheep_workdir}", "--bundled=",
       "--port=0", "--nolog_requests"], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  try:
    lines = []
    for line in proc.stdout:  # ends if the process dies
      lines.append(line)
      if line.startswith("serving on "):
        break
    assert lines and lines[-1].startswith("serving on http://127.0.0.1:"), "".join(lines)
    url = lines[-1].split()[2]
    conn = http.client.HTTPConnection(url.split("/")[2], timeout=30)
    conn.request("GET", "/api/models")
    out = json.loads(conn.getresponse().read())
    assert [m["id"] for m in out["models"]] == ["sheep"] and out["default"] == "sheep"
  finally:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0


def test_launcher_names_a_missing_workdir():
  proc = subprocess.run([sys.executable, "-m", "experiments.serve", "--workdir=/nonexistent/run",
                         "--bundled=", "--port=0"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1
  assert "/nonexistent/run" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("scale_factor", [1.0, 600.0])
def test_any_scale_factor_serves_at_its_default_scale(service, scale_factor):
  # The drawing scale's limits are multiples of each model's default: fixed limits
  # [0.05, 20] refused the default itself below a scale factor of 1.31 or above 524.
  cat = service.models["cat"]
  odd = dataclasses.replace(cat, id="odd", facts=dataclasses.replace(cat.facts,
                                                                     scale_factor=scale_factor))
  odd_service = serving.Service({"odd": odd})
  default = canvas.default_scale(scale_factor)
  out = odd_service.sample({"count": 1, "seed": 1})  # no scale given: the default
  assert out["scale"] == pytest.approx(default)
  low, high = odd_service.describe()["models"][0]["scale_range"]
  assert (low, high) == (pytest.approx(default / 16), pytest.approx(default * 16))
  assert odd_service.sample({"count": 1, "seed": 1, "scale": high})["scale"] == high
  with pytest.raises(canvas.RequestError, match="'scale' must be a number from"):
    odd_service.sample({"count": 1, "seed": 1, "scale": high * 1.01})
