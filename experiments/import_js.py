r"""Import a sketch-rnn-js / magenta-js model: `python -m experiments.import_js --model=cat --workdir=DIR`.

`--model` is a model file (`*.gen.json`, `*.vae.json`) or the name of a bundled
one (cat, pig: sketch_vae/assets/models). The workdir it writes works with
every launcher that takes --workdir (evaluate, sample, complete; train, to
fine-tune with the same model flags); see sketch_vae/pretrained.py.
"""
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A browser model file, or a bundled model name (cat, pig).")
flags.DEFINE_string("workdir", None, "A new directory for the imported model.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save
  from sketch_vae import pretrained
  try:
    model = pretrained.import_to_workdir(FLAGS.model, FLAGS.workdir)
  except (ValueError, OSError) as e:
    sys.exit(f"import_js: error: {e}")
  s, info = model.spec, model.info
  kind = (f"VAE (LSTM encoder {s.enc_rnn_size} x 2, z {s.z_size})" if s.conditional
          else "decoder-only")
  print(f"imported {info.get('name', '?')!r} (mode {info['mode']}, version {info['version']}): "
        f"{kind}, LSTM decoder {s.dec_rnn_size}, {s.num_mixture} mixtures; scale factor "
        f"{model.facts.scale_factor:g}, N_max {model.facts.max_seq_len}")
  print(f"wrote {FLAGS.workdir}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["model", "workdir"])
  app.run(main)
