"""Checkpoint-module helpers that every launcher leans on: the atomic text writer's file mode,
and the one check of a checkpoint name (best, latest or a step number).

Restoring and saving states are tested with training (test_train.py).
"""
import os
import stat

import jax
import pytest

from sketch_vae import checkpoint, config as config_lib, data, train

TINY = dict(enc_rnn_size=8, dec_rnn_size=12, z_size=4, num_mixture=2)


def test_write_text_atomic_files_get_the_umask_mode_and_no_temporary_stays(tmp_path):
  # mkstemp's 0600 would hide exported models and run files from everyone else.
  path = tmp_path / "new_dir" / "model.json"
  previous = os.umask(0o022)
  try:
    checkpoint.write_text_atomic(str(path), "first")
    first_mode = stat.S_IMODE(path.stat().st_mode)
    os.umask(0o077)
    checkpoint.write_text_atomic(str(path), "second")  # replaces: the new file's mode counts
    second_mode = stat.S_IMODE(path.stat().st_mode)
  finally:
    os.umask(previous)
  assert first_mode == 0o644
  assert second_mode == 0o600
  assert path.read_text() == "second"
  assert list(path.parent.iterdir()) == [path]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """An untrained tiny VAE saved at step 0 (no data needed to load it)."""
  root = tmp_path_factory.mktemp("checkpoint")
  cfg = config_lib.PRESETS["original"].replace(**TINY, max_seq_len=20)
  checkpoint.save_run_files(str(root), cfg, data.DataFacts(scale_factor=10.0, max_seq_len=20))
  ckpts = checkpoint.Checkpoints(str(root))
  ckpts.save_latest(0, jax.device_get(train.create_state(cfg, jax.random.key(0)))._asdict())
  ckpts.close()
  return str(root)


@pytest.mark.parametrize("which", ["foo", "-1", "1.5", "²", "", "Best"])
def test_load_model_names_a_bad_checkpoint_before_reading_anything(workdir, tmp_path, which):
  # "²".isdigit() is True but int() refuses it: the check must agree with int().
  for where in (workdir, str(tmp_path / "missing")):
    with pytest.raises(ValueError) as e:
      checkpoint.load_model(where, which)
    assert str(e.value) == f"checkpoint must be best, latest or a step number, not {which!r}"


def test_load_model_takes_a_step_number(workdir):
  _, facts, _, step = checkpoint.load_model(workdir, "0")
  assert int(step) == 0 and facts.max_seq_len == 20
