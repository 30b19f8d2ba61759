"""The sampling functions on known logits, the repetition penalty against mlx_lm's, and the batch sampler's rows
keeping their own streams when rows join and leave."""

import mlx.core as mx
import pytest

from inference import SamplingParams
from inference.sampling import (
    REPETITION_CONTEXT,
    BatchSampler,
    min_p_cut,
    penalize_repetitions,
    top_k_cut,
    top_p_cut,
)

LOGPROBS = mx.log(mx.array([[0.5, 0.3, 0.15, 0.05]]))


def ordered(logprobs):
    return -mx.sort(-logprobs, axis=-1)


def kept(cut) -> list[bool]:
    return [not c for c in cut[0].tolist()]


@pytest.mark.parametrize("k, expected", [(1, [True, False, False, False]), (2, [True, True, False, False]),
                                         (0, [True] * 4), (4, [True] * 4), (10**9, [True] * 4)])
def test_top_k_keeps_the_k_most_likely_and_never_indexes_past_the_vocabulary(k, expected):
    assert kept(top_k_cut(LOGPROBS, ordered(LOGPROBS), mx.array([[k]]))) == expected


@pytest.mark.parametrize("p, expected", [(0.5, [True, False, False, False]), (0.6, [True, True, False, False]),
                                         (0.81, [True, True, True, False]), (1.0, [True] * 4)])
def test_top_p_keeps_the_token_that_crosses_the_mass(p, expected):
    assert kept(top_p_cut(LOGPROBS, ordered(LOGPROBS), mx.array([[p]]))) == expected


def test_min_p_is_relative_to_the_most_likely_token():
    assert kept(min_p_cut(LOGPROBS, mx.array([[0.5]]))) == [True, True, False, False]


def test_repetition_penalty_matches_mlx_lm():
    from mlx_lm.sample_utils import make_repetition_penalty

    logits = mx.random.normal((1, 64), key=mx.random.key(0)) * 3
    history = [3, 9, 9, 17, 40, 3, 5] * 4  # repeats, longer than the window
    reference = make_repetition_penalty(1.3, REPETITION_CONTEXT)(history, mx.array(logits))
    window = mx.array([history[-REPETITION_CONTEXT:]])
    ours = penalize_repetitions(logits, window, mx.array([[1.3]]))
    assert mx.array_equal(ours, reference).item()


def test_a_short_prompt_is_penalized_like_its_tokens_alone():
    """A window shorter than REPETITION_CONTEXT is padded with copies of its first token: the same penalty."""
    logits = mx.random.normal((1, 64), key=mx.random.key(1)) * 3
    sampler = BatchSampler([SamplingParams(repetition_penalty=2.0, seed=0)], [[7, 11]])
    assert sampler.recent.shape == (1, REPETITION_CONTEXT)
    direct = penalize_repetitions(logits, mx.array([[7, 11]]), mx.array([[2.0]]))
    assert mx.array_equal(penalize_repetitions(logits, sampler.recent, sampler.penalty), direct).item()


def draws(sampler: BatchSampler, steps: list[mx.array]) -> list[list[int]]:
    return [sampler(logits).tolist() for logits in steps]


def test_rows_keep_their_own_streams_when_rows_join_and_leave():
    vocab = 50
    logits = [mx.random.normal((1, vocab), key=mx.random.key(10 + i)) for i in range(6)]
    a = SamplingParams(temperature=1.0, top_p=0.9, seed=1)
    b = SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.2, seed=2)
    alone_a = draws(BatchSampler([a], [[1, 2, 3]]), logits)
    alone_b = draws(BatchSampler([b], [[4, 5]]), logits[2:])

    batch = BatchSampler([a], [[1, 2, 3]])
    together = draws(batch, logits[:2])  # a alone for two steps
    batch.extend(BatchSampler([b], [[4, 5]]))  # b joins
    together += draws(batch, [mx.concatenate([step, step]) for step in logits[2:4]])
    batch.filter([1])  # a leaves
    tail_b = draws(batch, logits[4:])
    assert [t[0] for t in together] == [t[0] for t in alone_a[:4]]
    assert [t[1] for t in together[2:]] + [t[0] for t in tail_b] == [t[0] for t in alone_b]
    assert len({t[0] for t in alone_a}) > 1  # sampled, not a constant
