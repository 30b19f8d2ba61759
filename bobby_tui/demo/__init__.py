"""The demo model that ships with bobby-tui: a tiny Qwen3 trained on Debian's fortunes, and a LoRA
adapter in one fortune category's voice. `make run` on a fresh clone uses it; see MODEL_CARD.md.

Built by `python -m tools.train_demo all` (by hand, never in CI).
"""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
DEMO_MODEL_DIR = DEMO_DIR / "model"
DEMO_ADAPTER_DIR = DEMO_DIR / "adapter"
# Test data: held-out texts of the adapter's category, and every word of the training corpus.
DEMO_ADAPTER_VALIDATION = DEMO_DIR / "data" / "adapter_valid.jsonl"
DEMO_VOCABULARY = DEMO_DIR / "data" / "vocabulary.txt"
