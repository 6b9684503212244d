"""Devices and hosts: the only module that knows about them.

A global batch of G sketches is split over P hosts (each loads only its rows,
G/P of them) and then over each host's D local devices (G/(P*D) rows each).
The per-device step is pmapped over local devices with axis name `AXIS`;
`lax.pmean` over it spans every device of every host after
`jax.distributed.initialize`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

AXIS = "devices"


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """Joins a multi-host run (no-op for a single process)."""
  if num_processes > 1:
    # CPU processes need a collectives backend for psum/pmean across hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where this process's rows of each global batch live."""
  global_batch: int
  process_index: int
  process_count: int
  devices: tuple

  @property
  def per_host(self) -> int:
    return self.global_batch // self.process_count

  @property
  def per_device(self) -> int:
    return self.per_host // len(self.devices)

  @property
  def host_rows(self) -> slice:
    start = self.process_index * self.per_host
    return slice(start, start + self.per_host)


def layout(global_batch: int, num_devices: int = 0) -> Layout:
  """This process's layout; `num_devices` = 0 uses every local device."""
  if global_batch < 1:  # 0 and negative sizes divide over the devices but batch nothing
    raise ValueError(f"batch_size must be at least 1, got {global_batch}")
  devices = jax.local_devices()
  if num_devices and jax.process_count() > 1 and num_devices != len(devices):
    raise ValueError("a multi-host run uses every local device of each host; drop num_devices")
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices but this host has {len(devices)}")
    devices = devices[:num_devices]
  P, D = jax.process_count(), len(devices)
  if global_batch % (P * D):
    raise ValueError(f"batch_size {global_batch} does not divide over {P} host(s) x {D} "
                     f"device(s) = {P * D}; choose a multiple of {P * D}")
  return Layout(global_batch, jax.process_index(), P, tuple(devices))


def shard(tree, lay: Layout):
  """Host arrays with leading axis per_host -> [D, per_device, ...] (pmap places them)."""
  D = len(lay.devices)
  return jax.tree.map(lambda a: np.reshape(a, (D, -1) + np.shape(a)[1:]), tree)


def replicate(tree, lay: Layout):
  """One copy per local device along a new leading axis."""
  D = len(lay.devices)
  return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (D,) + np.shape(a)), tree)


def unreplicate(tree):
  """First device's copy, fetched to the host."""
  return jax.device_get(jax.tree.map(lambda a: a[0], tree))


def pmap(fn: Callable, lay: Layout, *, donate_state: bool = True) -> Callable:
  """pmap a per-device `(state, batch, key) -> ...` over the layout's devices.

  The key is broadcast (in_axes None); the state's buffers are donated.
  """
  return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0, None), devices=pmap_devices(lay),
                  donate_argnums=(0,) if donate_state else ())


def pmap_devices(lay: Layout):
  """Explicit local devices on one host; None (= every device of every host) across hosts,
  so that collectives span all of them."""
  return None if lay.process_count > 1 else list(lay.devices)


def mean_over_devices(tree, axis_name: Optional[str]):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def sum_over_devices(tree, axis_name: Optional[str]):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)
