"""Draw together: the HTTP-independent half of the local drawing page (experiments/serve.py).

A request body (parsed JSON) is checked, converted the way the training data
was made (canvas.py says how, and in which units), sampled with the vmapped
sampler, and converted back to canvas pixels; only sockets are left to the
server, so all of this is tested without one.

Every sampler call has one shape per model (a batch of Limits.max_count rows, a
prefix of N_max rows, z present for VAEs), so each model compiles its sampler
once, at warm-up, and requests never compile. The encoder likewise always sees
a batch of 2.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import time
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import canvas, checkpoint, pretrained, sample
from sketch_vae import strokes as strokes_lib
from sketch_vae.canvas import Limits, RequestError, show

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "web")
DEFAULT_TEMPERATURE = 0.4
DEFAULT_COUNT = 4
ENDPOINTS = ("complete", "reconstruct", "interpolate", "sample")


@dataclasses.dataclass(frozen=True)
class ServedModel:
  id: str
  source: str  # "bundled" or the workdir's folder name (no paths go to the page)
  config: Any
  facts: Any
  params: Any
  step: int

  @property
  def spec(self):
    return self.config.model

  @property
  def max_len(self) -> int:
    return self.facts.max_seq_len

  def default_scale(self) -> float:
    return canvas.default_scale(self.facts.scale_factor)

  def describe(self) -> dict:
    s = self.spec
    return {"id": self.id, "kind": "vae" if s.conditional else "decoder-only",
            "source": self.source, "cell": s.dec_model, "dec_rnn_size": s.dec_rnn_size,
            "z_size": s.z_size if s.conditional else None, "num_mixture": s.num_mixture,
            "scale_factor": self.facts.scale_factor, "max_seq_len": self.max_len,
            "step": self.step, "default_scale": round(self.default_scale(), 4)}


def load_models(workdirs: Sequence[str] = (), bundled: Optional[Sequence[str]] = None,
                cache_dir: Optional[str] = None, which: str = "best") -> dict[str, ServedModel]:
  """Workdirs (id = folder name) then bundled models (all unless named; id = name)."""
  found = [(os.path.basename(os.path.abspath(w)), w, os.path.basename(os.path.abspath(w)))
           for w in workdirs]
  names = pretrained.bundled_models() if bundled is None else bundled
  found += [(n, pretrained.ensure_workdir(pretrained.BUNDLED_PREFIX + n, cache_dir), "bundled")
            for n in names]
  models = {}
  for base, workdir, source in found:
    model_id, i = base, 2
    while model_id in models:  # two folders of one name, or a workdir called "cat"
      model_id, i = f"{base}-{i}", i + 1
    config, facts, params, step = checkpoint.load_model(workdir, which)
    models[model_id] = ServedModel(model_id, source, config, facts, jax.device_put(params),
                                   int(step))
  return models


class _Request(NamedTuple):
  model: ServedModel
  temperature: float
  count: int
  scale: float
  seed: int


# ----------------------------------------------------------------------------
# The service.


class Service:
  """The loaded models and what the page asks of them. Thread-safe: models are
  read-only after loading, and compiled JAX calls may run concurrently."""

  def __init__(self, models: dict[str, ServedModel], default: Optional[str] = None,
               limits: Limits = Limits()):
    if not models:
      raise ValueError("no models to serve")
    if default is not None and default not in models:
      raise ValueError(f"--model {default!r} is not loaded; loaded: {', '.join(models)}")
    self.models, self.limits = models, limits
    self.default = default or next(iter(models))

  def warm_up(self) -> dict[str, float]:
    """Runs every endpoint once per model, so that requests find everything compiled:
    the sampler, the encoder and the small key and z ops, all at fixed shapes."""
    seconds, line = {}, [[[0.0, 0.0], [10.0, 5.0]]]
    for m in self.models.values():
      start = time.perf_counter()
      base = {"model": m.id, "count": 1, "seed": 0}
      self.sample(base)
      self.complete(dict(base, strokes=line))
      if m.spec.conditional:
        self.complete(dict(base, strokes=line, z="encode"))
        self.reconstruct(dict(base, strokes=line))
        self.interpolate(dict(base, count=2, strokes_a=line, strokes_b=line))
      seconds[m.id] = time.perf_counter() - start
    return seconds

  def describe(self) -> dict:
    lim = self.limits
    models = [dict(m.describe(), scale_range=list(self._scale_range(m)))
              for m in self.models.values()]
    return {"models": models, "default": self.default,
            "canvas_size": canvas.CANVAS_SIZE, "rdp_epsilon": canvas.RDP_EPSILON,
            "limits": {"max_count": lim.max_count, "temperature": list(lim.temperature),
                       "scale_multiple": list(lim.scale_multiple),
                       "max_raw_points": lim.max_raw_points,
                       "max_body_bytes": lim.max_body_bytes}}

  def complete(self, body) -> dict:
    """Endings of the drawing: its points forced, then sampled (paper section 4.4)."""
    r = self._parse(body, {"strokes", "z"})
    m, mode = r.model, body.get("z", "prior")
    if mode not in ("prior", "encode") or (mode == "encode" and not m.spec.conditional):
      raise RequestError(f"'z' must be 'prior' or, for a VAE, 'encode'; got {show(mode)}")
    strokes, given = self._model_drawing(body, "strokes", r, room=1)
    k_z, k_sample = jax.random.split(jax.random.key(r.seed))
    z = None
    if mode == "encode":
      z = np.repeat(self._encode(m, [strokes], k_z), r.count, axis=0)
    elif m.spec.conditional:
      z = self._prior(m, k_z, r.count)
    prefix = strokes_lib.to_stroke5(strokes, m.max_len)[1:]
    drawn = self._draw(m, k_sample, [r.temperature] * r.count, z=z, prefix=prefix,
                       prefix_len=len(strokes))
    return self._answer(r, drawn, given[0][0], len(given), given=given)

  def reconstruct(self, body) -> dict:
    """"Mimic": the drawing encoded to z (the posterior mean), decoded from scratch."""
    r = self._parse(body, {"strokes"}, needs_encoder="reconstruct a drawing")
    strokes, given = self._model_drawing(body, "strokes", r)
    k_z, k_sample = jax.random.split(jax.random.key(r.seed))
    z = np.repeat(self._encode(r.model, [strokes], k_z), r.count, axis=0)
    drawn = self._draw(r.model, k_sample, [r.temperature] * r.count, z=z)
    return self._answer(r, drawn, given[0][0], 0, given=given)

  def interpolate(self, body) -> dict:
    """Decodes `count` latents from z(A) to z(B) (slerp, or lerp), all with one key, so
    neighbouring drawings differ because their z does (paper section 4.2)."""
    r = self._parse(body, {"strokes_a", "strokes_b", "method"}, needs_encoder="interpolate",
                    min_count=2, default_count=5)
    method = body.get("method", "slerp")
    if method not in ("slerp", "lerp"):
      raise RequestError(f"'method' must be 'slerp' or 'lerp', got {show(method)}")
    strokes_a, given_a = self._model_drawing(body, "strokes_a", r)
    strokes_b, given_b = self._model_drawing(body, "strokes_b", r)
    k_z, k_sample = jax.random.split(jax.random.key(r.seed))
    z_a, z_b = self._encode(r.model, [strokes_a, strokes_b], k_z)
    z = sample.interpolate(z_a, z_b, r.count, method)
    drawn = self._draw(r.model, k_sample, [r.temperature] * r.count, z=z, shared_key=True)
    out = self._answer(r, drawn, given_a[0][0], 0, given_a=given_a, given_b=given_b)
    for i, result in enumerate(out["results"]):
      result["t"] = i / (r.count - 1)
    return out

  def sample(self, body) -> dict:
    """Drawings from nothing: decoder-only models from their zero state, VAEs from z ~ N(0, I)."""
    r = self._parse(body, set())
    k_z, k_sample = jax.random.split(jax.random.key(r.seed))
    z = self._prior(r.model, k_z, r.count) if r.model.spec.conditional else None
    drawn = self._draw(r.model, k_sample, [r.temperature] * r.count, z=z)
    return self._answer(r, drawn, (0.0, 0.0), 0)

  # --------------------------------------------------------------------------

  def _parse(self, body, extra: set, *, needs_encoder: Optional[str] = None, min_count: int = 1,
             default_count: int = DEFAULT_COUNT) -> _Request:
    if not isinstance(body, dict):
      raise RequestError(f"the body must be a JSON object, got {show(body)}")
    allowed = {"model", "temperature", "count", "scale", "seed"} | extra
    unknown = sorted(set(body) - allowed)
    if unknown:
      raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}; this endpoint "
                         f"takes {', '.join(sorted(allowed))}")
    model_id = body.get("model", self.default)
    if not isinstance(model_id, str) or model_id not in self.models:
      raise RequestError(f"unknown model {show(model_id)}; this server has "
                         f"{', '.join(self.models)}")
    model = self.models[model_id]
    if needs_encoder and not model.spec.conditional:
      raise RequestError(f"model '{model_id}' is decoder-only: it has no encoder, so it cannot "
                         f"{needs_encoder}; pick a VAE model")
    lim = self.limits
    return _Request(
        model, canvas.number(body, "temperature", DEFAULT_TEMPERATURE, *lim.temperature),
        canvas.integer(body, "count", max(default_count, min_count), min_count, lim.max_count),
        canvas.number(body, "scale", model.default_scale(), *self._scale_range(model)),
        canvas.integer(body, "seed", secrets.randbelow(2**31), 0, 2**31 - 1))

  def _scale_range(self, m: ServedModel) -> tuple[float, float]:
    low, high = self.limits.scale_multiple
    return m.default_scale() * low, m.default_scale() * high

  def _model_drawing(self, body, name: str, r: _Request, room: int = 0):
    """The drawing in model units; it must leave `room` rows of N_max for the model."""
    lines = canvas.parse_drawing(body.get(name), name, self.limits)
    strokes, given = canvas.drawing_to_model(lines, r.scale, r.model.facts.scale_factor)
    most = r.model.max_len - room
    if len(strokes) > most:
      raise RequestError(
          f"'{name}' has {len(strokes)} points after simplification (RDP, epsilon "
          f"{canvas.RDP_EPSILON:g} model px); model '{r.model.id}' takes at most {most}: "
          f"draw less, or lower the drawing scale")
    return strokes, given

  def _prior(self, m: ServedModel, key, n: int) -> np.ndarray:
    """n latents from N(0, I), drawn as a full batch so that every n uses one shape."""
    return np.asarray(sample.prior_z(m.spec, key, self.limits.max_count))[:n]

  def _encode(self, m: ServedModel, sketches, key) -> np.ndarray:
    """[n, Z] posterior means; always a batch of 2 rows (one compiled shape)."""
    padded = list(sketches) + [sketches[0]] * (2 - len(sketches))
    x, lengths = strokes_lib.pad_batch(padded, m.max_len)
    z = sample.encode(m.spec, m.params, x, lengths, key, use_mean=True)
    return np.asarray(z)[:len(sketches)]

  def _draw(self, m: ServedModel, key, temperatures, *, z=None, prefix=None, prefix_len=0,
            shared_key: bool = False) -> list[tuple[np.ndarray, int]]:
    """(stroke-3 in model units, rows before the end) for each temperature, from one
    compiled call over a padded batch of Limits.max_count rows."""
    K, n, L = self.limits.max_count, len(temperatures), m.max_len
    temps_K = np.full((K,), temperatures[-1], np.float32)
    temps_K[:n] = temperatures
    z_KxZ = None
    if m.spec.conditional:
      z_KxZ = np.zeros((K, m.spec.z_size), np.float32)
      z_KxZ[:n] = z
    prefix_KxLx5 = np.zeros((K, L, 5), np.float32)
    if prefix is not None:
      prefix_KxLx5[:] = prefix
    lengths_K = np.full((K,), prefix_len, np.int32)
    if shared_key:
      out = sample.batch_sampler(m.spec, L)(m.params, jnp.stack([key] * K), temps_K, z_KxZ,
                                            prefix_KxLx5, lengths_K)
    else:
      out = sample.sample_batch(m.spec, m.params, key, temps_K, z=z_KxZ, prefix=prefix_KxLx5,
                                prefix_len=lengths_K, max_len=L)
    rows, lengths = np.asarray(out.strokes), np.asarray(out.length)
    return [(strokes_lib.stroke5_to_stroke3(rows[i, :lengths[i]]), int(lengths[i]))
            for i in range(n)]

  def _answer(self, r: _Request, drawn, anchor, given_strokes: int, **drawings) -> dict:
    m = r.model
    results = [{"strokes": canvas.rounded(canvas.model_to_canvas(s, r.scale, m.facts.scale_factor,
                                                                 anchor)),
                "given_strokes": given_strokes, "points": n, "ended": n < m.max_len}
               for s, n in drawn]
    out = {"model": m.id, "seed": r.seed, "temperature": r.temperature, "scale": r.scale,
           "results": results}
    out.update({name: canvas.rounded(lines) for name, lines in drawings.items()})
    return out
