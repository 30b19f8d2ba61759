"""bobby-tui: compose short social posts with a locally fine-tuned Qwen3 on MLX."""

__version__ = "0.1.0"
