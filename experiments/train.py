r"""Train sketch-rnn: `python -m experiments.train --data=PATH[,PATH] --workdir=DIR`.

Flags are named as the original's hyperparameters (model.py
get_default_hparams) and default to its values; `--preset` picks a starting
point (original, small, paper_large) that explicit flags override. Running
the same command again resumes from the latest checkpoint.
"""
import os
import sys

from absl import app, flags, logging

from experiments import hugepages

from sketch_vae.config import Config, ModelSpec, PRESETS, TrainSpec  # noqa: F401
from sketch_vae import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_boolean("reuse_memory", False, "Re-run once with glibc malloc tunables that keep and "
                     "reuse the step's large blocks: faster for LSTM models on CPU (config A "
                     "1.16 -> 1.06 s/step), slower for the large HyperLSTM one, and a higher peak "
                     "RSS (see experiments/hugepages.py).")
flags.DEFINE_boolean("huge_pages", True, "Ask malloc for transparent huge pages "
                     "(GLIBC_TUNABLES glibc.malloc.hugetlb=1).")
flags.DEFINE_string("data", None, "Comma-separated sketch-rnn .npz files (classes are concatenated).")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard files go here.")
flags.DEFINE_enum("preset", "original", sorted(PRESETS), "Starting configuration.")
flags.DEFINE_integer("num_devices", 0, "Local devices to use (0 = all).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")

_MODEL, _TRAIN = ModelSpec(), TrainSpec()
_HELP = {
    "dec_model": "Decoder cell: lstm, layer_norm or hyper.", "enc_model": "Encoder cell.",
    "dec_rnn_size": "Decoder units.", "enc_rnn_size": "Encoder units per direction.",
    "z_size": "Latent size.", "num_mixture": "Gaussian mixture components M.",
    "conditional": "VAE (True) or decoder-only (False).",
    "use_recurrent_dropout": "Recurrent dropout without memory loss.",
    "recurrent_dropout_prob": "Keep probability of recurrent dropout.",
    "use_input_dropout": "Input dropout on the decoder.", "input_dropout_prob": "Its keep probability.",
    "use_output_dropout": "Output dropout on the decoder.", "output_dropout_prob": "Its keep probability.",
    "hyper_num_units": "HyperLSTM: hyper cell units.", "hyper_embedding_size": "HyperLSTM: embedding size.",
    "matmul_dtype": "float32, or bfloat16 matmuls with float32 accumulation and state.",
    "remat": "Rematerialise scans in the backward pass (long sequences).",
    "batch_size": "Global batch (over all hosts and devices).", "num_steps": "Training steps.",
    "learning_rate": "Initial learning rate.", "decay_rate": "Learning-rate decay per step.",
    "min_learning_rate": "Learning-rate floor.", "kl_weight": "Final KL weight w_KL.",
    "kl_weight_start": "KL weight at step 0.", "kl_decay_rate": "KL annealing rate R per step.",
    "kl_tolerance": "KL floor KL_min.", "grad_clip": "Gradient clip value.",
    "clip_mode": "value (the original) or global_norm.",
    "random_scale_factor": "Augmentation: x/y stretch amount.",
    "augment_stroke_prob": "Augmentation: point-merge probability.",
    "max_seq_len": "Drop sketches longer than this.", "seed": "Seed for init, data order and keys.",
    "log_every": "Steps between train log lines.", "eval_every": "Steps between validations.",
    "save_every": "Steps between checkpoints.", "on_nonfinite": "stop or skip on a non-finite loss.",
}


def _define(name, default):
  if isinstance(default, bool):
    flags.DEFINE_boolean(name, default, _HELP[name])
  elif isinstance(default, int):
    flags.DEFINE_integer(name, default, _HELP[name])
  elif isinstance(default, float):
    flags.DEFINE_float(name, default, _HELP[name])
  else:
    flags.DEFINE_string(name, default, _HELP[name])


HPARAMS = list(_HELP)
for _name in HPARAMS:
  _define(_name, getattr(_MODEL, _name) if hasattr(_MODEL, _name) else getattr(_TRAIN, _name))


def build_config() -> Config:
  overrides = {n: FLAGS[n].value for n in HPARAMS if FLAGS[n].present}
  return PRESETS[FLAGS.preset].replace(**overrides)


def main(argv):
  del argv
  hugepages.reexec_with_malloc_tunables(FLAGS.reuse_memory, FLAGS.huge_pages)
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  from sketch_vae import parallel
  if FLAGS.num_processes > 1:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from sketch_vae import checkpoint, data, evaluation, train
  config = build_config()
  try:
    config_lib.check(config)
    parallel.layout(config.train.batch_size, FLAGS.num_devices)  # devices vs batch, before any work
    facts = None
    # A resumed run keeps its scale factor and N_max. Run files without a
    # checkpoint (a start that failed before its first save) are not a run.
    resuming = checkpoint.Checkpoints(FLAGS.workdir, writer=False).latest_step() is not None
    if resuming and os.path.exists(os.path.join(FLAGS.workdir, checkpoint.FACTS_FILE)):
      saved, facts = checkpoint.load_run_files(FLAGS.workdir)
      if saved.model != config.model:
        raise ValueError(f"{FLAGS.workdir} holds a run with a different model ({saved.model}); "
                         f"use another --workdir or the same flags")
      recorded = os.path.join(FLAGS.workdir, "dataset.json")
      if os.path.exists(recorded):  # the saved scale factor and N_max belong to those files
        before = evaluation.training_data(FLAGS.workdir).split(",")
        now = [os.path.abspath(p) for p in FLAGS.data.split(",") if p]
        if sorted(before) != sorted(now):
          raise ValueError(f"{FLAGS.workdir} holds a run trained on {','.join(before)}, not "
                           f"{','.join(now)}; use another --workdir or the same --data")
      if saved.train.max_seq_len != config.train.max_seq_len:
        raise ValueError(f"{FLAGS.workdir} holds a run with max_seq_len "
                         f"{saved.train.max_seq_len}, not {config.train.max_seq_len}; use "
                         f"another --workdir or the same flags")
    dataset = data.load(FLAGS.data, max_seq_len=config.train.max_seq_len, facts=facts)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  limit = facts.max_seq_len if facts else config.train.max_seq_len  # what load() filtered by
  for split, r in dataset.report.items():
    print(f"{split}: {r.kept} sketches kept of {r.read} ({r.dropped_too_long} longer than "
          f"{limit}, {r.dropped_empty} empty dropped)")
  print(f"scale factor {dataset.facts.scale_factor:.4f}, N_max {dataset.facts.max_seq_len}")
  try:
    train.fit(config, dataset, FLAGS.workdir, num_devices=FLAGS.num_devices)
  except (train.NonFiniteLoss, data.DataError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["data", "workdir"])
  app.run(main)
