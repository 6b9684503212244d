"""Run configuration: the model spec plus training hyperparameters, presets, JSON.

Names follow the original's HParams (model.py get_default_hparams), so recipes
carry over; defaults are the original's. The library reads no flags: launchers
build a `Config` and pass it down.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from sketch_vae.model import ModelSpec


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  batch_size: int = 100
  num_steps: int = 10_000_000  # the original's "keep large"
  learning_rate: float = 1e-3
  decay_rate: float = 0.9999
  min_learning_rate: float = 1e-5
  kl_weight: float = 0.5
  kl_weight_start: float = 0.01
  kl_decay_rate: float = 0.99995
  kl_tolerance: float = 0.2  # KL_min, the floor
  grad_clip: float = 1.0
  clip_mode: str = "value"  # "value" (the original, element-wise) or "global_norm"
  random_scale_factor: float = 0.15
  augment_stroke_prob: float = 0.10
  max_seq_len: int = 250
  seed: int = 0
  log_every: int = 20
  eval_every: int = 500
  save_every: int = 500
  on_nonfinite: str = "stop"  # "stop" with a message naming the step, or "skip" the update


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelSpec = ModelSpec()
  train: TrainSpec = TrainSpec()

  def to_dict(self) -> dict:
    return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    return cls(model=_build(ModelSpec, d.get("model", {})), train=_build(TrainSpec, d.get("train", {})))

  @classmethod
  def from_json(cls, text: str) -> "Config":
    return cls.from_dict(json.loads(text))

  def replace(self, **overrides: Any) -> "Config":
    """Overrides by field name, routed to the model or training part."""
    model_fields = {f.name for f in dataclasses.fields(ModelSpec)}
    train_fields = {f.name for f in dataclasses.fields(TrainSpec)}
    unknown = set(overrides) - model_fields - train_fields
    if unknown:
      raise ValueError(f"unknown hyperparameter(s): {sorted(unknown)}")
    m = {k: v for k, v in overrides.items() if k in model_fields}
    t = {k: v for k, v in overrides.items() if k in train_fields}
    return Config(model=dataclasses.replace(self.model, **m), train=dataclasses.replace(self.train, **t))


def _build(cls, d: dict):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(d) - names
  if unknown:
    raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
  return cls(**d)


PRESETS = {
    # The original's defaults (model.py get_default_hparams).
    "original": Config(),
    # Trains in minutes on 2 CPU cores; recognisable strokes, not a paper model.
    "small": Config().replace(enc_rnn_size=64, dec_rnn_size=128, z_size=32, num_mixture=10,
                              batch_size=50, num_steps=1500, kl_decay_rate=0.999,
                              decay_rate=0.999, log_every=50, eval_every=250, save_every=250),
    # The paper's largest models: HyperLSTM 2048 decoder, layer-norm encoder 512 per direction.
    "paper_large": Config().replace(enc_model="layer_norm", dec_model="hyper", enc_rnn_size=512,
                                    dec_rnn_size=2048, hyper_num_units=256,
                                    hyper_embedding_size=32, z_size=128, num_mixture=20),
}


def check(config: Config) -> None:
  """Clear errors for settings that cannot work."""
  m, t = config.model, config.train
  from sketch_vae import cells  # late import keeps this module light
  for name in (m.enc_model, m.dec_model):
    if name not in cells.CELLS:
      raise ValueError(f"unknown cell {name!r}; choose one of {sorted(cells.CELLS)}")
  if t.clip_mode not in ("value", "global_norm"):
    raise ValueError(f"clip_mode must be 'value' or 'global_norm', not {t.clip_mode!r}")
  if t.on_nonfinite not in ("stop", "skip"):
    raise ValueError(f"on_nonfinite must be 'stop' or 'skip', not {t.on_nonfinite!r}")
  if m.matmul_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"matmul_dtype must be 'float32' or 'bfloat16', not {m.matmul_dtype!r}")
  for name in ("batch_size", "max_seq_len", "log_every", "eval_every", "save_every"):
    if getattr(t, name) <= 0:
      raise ValueError(f"{name} must be positive")
  for name in ("enc_rnn_size", "dec_rnn_size", "z_size", "num_mixture", "hyper_num_units",
               "hyper_embedding_size"):
    if getattr(m, name) < 1:
      raise ValueError(f"{name} must be at least 1, not {getattr(m, name)}")
  if t.num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, not {t.num_steps}")
  # Rates and keep probabilities in (0, 1]: the schedules take log(rate), and a
  # dropout mask divides by its keep probability.
  in_unit = [(t, "decay_rate"), (t, "kl_decay_rate"), (m, "recurrent_dropout_prob"),
             (m, "input_dropout_prob"), (m, "output_dropout_prob")]
  for spec, name in in_unit:
    value = getattr(spec, name)
    if not 0.0 < value <= 1.0:
      raise ValueError(f"{name} must be in (0, 1], not {value}")
  for name in ("learning_rate", "min_learning_rate", "kl_weight", "kl_weight_start",
               "kl_tolerance", "grad_clip", "random_scale_factor", "augment_stroke_prob"):
    value = getattr(t, name)
    if not (math.isfinite(value) and value >= 0):
      raise ValueError(f"{name} must be finite and >= 0, not {value}")
  if t.random_scale_factor >= 1 or t.augment_stroke_prob > 1:
    raise ValueError(f"random_scale_factor must be < 1 (a stretch of 1 +- it must stay positive) "
                     f"and augment_stroke_prob <= 1; got {t.random_scale_factor}, "
                     f"{t.augment_stroke_prob}")
  if t.grad_clip == 0:
    raise ValueError("grad_clip must be positive (0 would zero every gradient)")


def positive_number(value, what: str) -> float:
  """float(value), or a ValueError naming `what` unless it is a finite number > 0.

  Written as "not (... > 0)" so that NaN fails too.
  """
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{what} must be a number > 0, not {value!r}") from None
  if not (math.isfinite(number) and number > 0):
    raise ValueError(f"{what} must be a finite number > 0, not {value!r}")
  return number
