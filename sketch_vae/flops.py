"""Counting the matrix-product FLOPs of a traced function, scans included.

Walks the jaxpr: every `dot_general` counts 2 * (product of batch dims) * M * N * K,
an equation inside a `scan` body counts `length` times, and a `cond` (which runs
one branch; `jax.lax.platform_dependent` is one) counts its costliest branch. Used by the
benchmark to report achieved GFLOP/s of the work actually done (e.g. the
hoisted z projection is counted once per sequence, not per step).
"""
from __future__ import annotations

import math

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  batch = math.prod(lhs[d] for d in lb)
  contract = math.prod(lhs[d] for d in lc)
  m = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
  n = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in rb)
  return 2 * batch * m * n * contract


def _subjaxprs(eqn):
  for value in eqn.params.values():
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def jaxpr_matmul_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      total += _dot_flops(eqn)
    subs = [jaxpr_matmul_flops(sub) for sub in _subjaxprs(eqn)]
    if eqn.primitive.name == "cond":  # one branch runs
      total += max(subs, default=0)
    elif eqn.primitive.name == "scan":  # the body runs `length` times
      total += eqn.params["length"] * sum(subs)
    else:
      total += sum(subs)
  return total


def matmul_flops(fn, *args) -> int:
  """Matrix-product FLOPs of one call of `fn(*args)` (forward and backward if it takes grads)."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
