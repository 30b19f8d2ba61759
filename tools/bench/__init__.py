"""Benchmarks (``engine``: our engine against mlx_lm; ``kernels``: our CUDA kernels against MLX's ops) and the one
writer of random Qwen3 checkpoints they, the tests and the GPU scripts share (``checkpoints``)."""
