"""Kernels of our own for one backend each (``cuda/``); everywhere else, and for shapes a kernel does not cover, the
engine runs MLX's ops, which each launcher also exposes as the reference its kernel must match."""
