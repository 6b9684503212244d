r"""Encode sketches and decode them again: `python -m experiments.reconstruct --workdir=DIR
--output_dir=OUT [--index=0,1,2,3 | --input=PATH[:i]]`.

One grid row per input sketch: the input first, then --num (default 1) decodings
of its z at each temperature (default 0.1,0.5,0.9), as the paper's conditional
reconstructions. Needs a VAE (a decoder-only model has no encoder).
Writes OUT/reconstruct.{svg,png,npz}.
"""
import numpy as np
from absl import app, flags

from experiments import common

flags.adopt_module_key_flags(common)


def main(argv):
  del argv
  with common.clean_errors():
    model = common.load_model(needs_encoder="reconstruct")
    inputs = common.load_inputs(model.facts, default_index=[0, 1, 2, 3])
    temps, n = common.temperatures([0.1, 0.5, 0.9]), common.num(1)
    k_z, k_sample = common.keys(2)
    z = common.encode(model, inputs, k_z)
    per_row = [t for t in temps for _ in range(n)]
    decoded = common.decode(model, k_sample, per_row * len(inputs), np.repeat(z, len(per_row), 0))
    rows = [[s.strokes] + row for s, row in zip(inputs, common.in_rows(decoded, len(per_row)))]
    common.save("reconstruct", rows, model.facts, row_labels=[s.label for s in inputs],
                col_labels=["input"] + [common.temperature_label(t) for t in per_row])


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output_dir"])
  app.run(main)
