r"""Latent analogies: `python -m experiments.analogy --workdir=DIR --output_dir=OUT
[--index=0,1,2 | --input=A --input=B --input=C]`.

Decodes z(a) - z(b) + z(c), "what is to c as a is to b" (paper section 4.3:
take b's features away from a and add c's). One grid row per temperature
(default 0.1; or --greedy): a, b, c, then --num (default 4) decodings of the
result. Needs a VAE. Writes OUT/analogy.{svg,png,npz}.
"""
import numpy as np
from absl import app, flags

from experiments import common
from sketch_vae import sample

flags.adopt_module_key_flags(common)


def main(argv):
  del argv
  with common.clean_errors():
    model = common.load_model(needs_encoder="make analogies")
    inputs = common.load_inputs(model.facts, default_index=[0, 1, 2], count=3)
    temps, n = common.temperatures([0.1]), common.num(4)
    k_z, k_sample = common.keys(2)
    z_result = sample.analogy(*common.encode(model, inputs, k_z))
    decoded = common.decode(model, k_sample, [t for t in temps for _ in range(n)],
                            np.tile(z_result, (len(temps) * n, 1)))
    rows = [[s.strokes for s in inputs] + results for results in common.in_rows(decoded, n)]
    common.save("analogy", rows, model.facts,
                row_labels=[common.temperature_label(t) for t in temps],
                col_labels=[f"a: {inputs[0].label}", f"− b: {inputs[1].label}",
                            f"+ c: {inputs[2].label}"] + ["= a − b + c"] * n)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output_dir"])
  app.run(main)
