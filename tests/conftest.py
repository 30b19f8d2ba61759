import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures.py, tests/parity.py


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path, monkeypatch):
    """Every test gets its own config and data dirs: no test reads or writes the real user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """name -> (model_dir, adapter_dir) for every tiny fixture checkpoint, written once per test session."""
    from fixtures import FIXTURES, write_adapter, write_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {
        name: (model := write_model(root / name, spec, seed=i), write_adapter(root / f"{name}-adapter", model))
        for i, (name, spec) in enumerate(FIXTURES.items())
    }


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    """The real Qwen3 tokenizer as a checkpoint holds it: tokenizer.json and tokenizer_config.json only (the package
    also ships vocab.json and merges.txt, which the oracles would otherwise load instead). Read-only: a test that
    changes a file copies it first."""
    from fixtures import QWEN_TOKENIZER_DIR

    target = tmp_path_factory.mktemp("qwen3-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN_TOKENIZER_DIR / name, target / name)
    return target


@pytest.fixture(scope="session")
def qwen(qwen_dir):
    """Our Tokenizer on the real Qwen3 files."""
    from inference.tokenizer import Tokenizer

    return Tokenizer(qwen_dir)
