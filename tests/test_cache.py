"""Per-layer caches whose rows hold prompts of different lengths: a row's logits are the same whether it decodes
alone or in a left-padded batch that rows join (``extend``) and leave (``filter``) between steps."""

import mlx.core as mx
import pytest

from inference import Engine
from inference.cache import KVCache

PROMPTS = ["Write a post about the sea.", "A journey of a thousand miles begins with a single step, they say."]


@pytest.fixture(scope="module")
def engine(tiny_models):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    return Engine.load(model_dir, adapter_dir)


def alone(engine, ids: list[int], steps: list[int]) -> list[mx.array]:
    """Logits of the prompt's last position, then after each of ``steps`` fed one at a time, on a one-row cache."""
    model, cache = engine.model, engine.model.new_cache(1)
    out = [model(mx.array([ids]), cache, True)[0]]
    for token in steps:
        out.append(model.decode(mx.array([[token]]), cache, True)[0])
    return out


def prefilled(engine, ids: list[int]) -> tuple[list[KVCache], mx.array]:
    cache = engine.model.new_cache(1)
    return cache, engine.model(mx.array([ids]), cache, True)


def test_rows_of_different_lengths_decode_as_if_alone(engine):
    model = engine.model
    short, long = (engine.tokenizer.encode(p) for p in PROMPTS)
    assert len(short) < len(long)
    steps = [5, 17, 42, 99]
    expected = [alone(engine, ids, steps) for ids in (short, long)]

    batch, first = prefilled(engine, short)
    other, second = prefilled(engine, long)
    for layer_cache, joining in zip(batch, other, strict=True):
        layer_cache.extend(joining)
    assert batch[0].left_padding == [len(long) - len(short), 0] and batch[0].padded
    assert batch[0].lengths() == [len(short), len(long)]
    for row, logits in enumerate((first, second)):
        assert mx.abs(logits[0] - expected[row][0]).max().item() < 1e-4
    for n, token in enumerate(steps):
        logits = model.decode(mx.array([[token], [token]]), batch, True)
        for row in range(2):
            assert mx.abs(logits[row] - expected[row][n + 1]).max().item() < 1e-4, (row, n)


def test_a_row_joins_a_running_batch_and_another_leaves(engine):
    model = engine.model
    short, long = (engine.tokenizer.encode(p) for p in PROMPTS)
    expected_long = alone(engine, long, [7, 8, 9])
    expected_short = alone(engine, short, [3, 4, 5])

    batch, _ = prefilled(engine, long)
    model.decode(mx.array([[7]]), batch, True)  # the long prompt's row runs one step alone
    joining, _ = prefilled(engine, short)
    for layer_cache, new in zip(batch, joining, strict=True):
        layer_cache.extend(new)
    assert batch[0].left_padding == [0, len(long) + 1 - len(short)]
    logits = model.decode(mx.array([[8], [3]]), batch, True)
    assert mx.abs(logits[0] - expected_long[2]).max().item() < 1e-4
    assert mx.abs(logits[1] - expected_short[1]).max().item() < 1e-4

    for layer_cache in batch:  # the long row finishes: the short one's padding is cut off with it
        layer_cache.filter([1])
    assert batch[0].left_padding == [0] and not batch[0].padded and batch[0].batch == 1
    logits = model.decode(mx.array([[4]]), batch, True)
    assert mx.abs(logits[0] - expected_short[2]).max().item() < 1e-4


def test_trim_keeps_a_prefix_that_a_longer_prompt_reuses(engine):
    model = engine.model
    ids = engine.tokenizer.encode(PROMPTS[1])
    cache, _ = prefilled(engine, ids)
    assert cache[0].trim(5) == 5 and cache[0].offset == len(ids) - 5
    for layer_cache in cache[1:]:
        layer_cache.trim(5)
    again = model(mx.array([ids[-5:]]), cache, True)
    assert mx.abs(again[0] - alone(engine, ids, [])[0]).max().item() < 1e-4


def test_mask_hides_each_rows_padding():
    cache = KVCache(2, 1, 8, mx.float32, left_padding=[2, 0])
    cache.offset = 4
    one = cache.make_mask(1)
    assert one.shape == (2, 1, 1, 5)
    assert one[0, 0, 0].tolist() == [False, False, True, True, True] and all(one[1, 0, 0].tolist())
    two = cache.make_mask(2)
    assert two[0, 0].tolist() == [[False, False, True, True, True, False], [False, False, True, True, True, True]]
    assert KVCache(3, 1, 8, mx.float32).make_mask(1) is None  # rows that agree need no mask
    assert cache.positions().tolist() == [2, 4]


def test_capacity_stays_off_multiples_of_256_for_batches(engine):
    ids = engine.tokenizer.encode(PROMPTS[0])
    single, _ = prefilled(engine, ids)
    assert single[0].capacity % 256 == 0
    batch = single[0].repeat(4)
    assert batch.capacity % 256 == KVCache.batch_padding
    batch.filter([2])
    assert batch.capacity % 256 == 0
