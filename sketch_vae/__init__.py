"""sketch_vae: sketch-rnn (Ha & Eck, ICLR 2018) as a functional JAX library."""

__version__ = "0.1.0"
