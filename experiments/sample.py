r"""Sketches from nothing: `python -m experiments.sample --workdir=DIR --output_dir=OUT`.

One grid row per temperature (default 0.1,0.5,0.9), --num (default 8) sketches
per row. A conditional model decodes z ~ N(0, I); column j uses the same z in
every row, so a column shows one latent at rising temperature. A decoder-only
model has no z and samples unconditionally. Writes OUT/sample.{svg,png,npz}.
"""
import jax.numpy as jnp
from absl import app, flags

from experiments import common
from sketch_vae import sample

flags.adopt_module_key_flags(common)


def main(argv):
  del argv
  with common.clean_errors():
    model = common.load_model()
    temps, n = common.temperatures([0.1, 0.5, 0.9]), common.num(8)
    k_z, k_sample = common.keys(2)
    z = sample.prior_z(model.spec, k_z, n)
    z_all = None if z is None else jnp.tile(z, (len(temps), 1))
    sketches = common.decode(model, k_sample, [t for t in temps for _ in range(n)], z_all)
    common.save("sample", common.in_rows(sketches, n), model.facts,
                row_labels=[common.temperature_label(t) for t in temps])


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output_dir"])
  app.run(main)
