"""Generation behaviour: seeds, batched drafts, stop conditions, cancellation, prefix reuse, the owning thread."""

import threading

import mlx.core as mx
import pytest
from parity import ours_last_logits

from inference import DraftDone, Engine, GenerationRequest, SamplingParams, TokenDelta

PROMPT = "Write a post about the small boats."


@pytest.fixture(scope="module")
def engine(tiny_models):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    return Engine.load(model_dir, adapter_dir)


def run(engine, drafts, max_tokens=24, prompt=PROMPT, stop_strings=(), should_cancel=None):
    """-> (list of DraftDone by draft index, texts rebuilt from the deltas)"""
    request = GenerationRequest(engine.render_prompt(prompt), drafts, max_tokens=max_tokens, stop_strings=stop_strings)
    done, streamed = {}, ["" for _ in drafts]
    for event in engine.generate(request, should_cancel):
        if isinstance(event, TokenDelta):
            assert event.draft not in done, "no delta after a draft is done"
            streamed[event.draft] += event.text
        else:
            assert isinstance(event, DraftDone)
            done[event.draft] = event
    return [done[i] for i in range(len(drafts))], streamed


def test_same_seed_same_text_and_deltas_add_up(engine):
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)
    (first,), streamed = run(engine, [params])
    (second,), _ = run(engine, [params])
    (other,), _ = run(engine, [SamplingParams(temperature=1.0, top_p=0.95, seed=99)])
    assert first.text == second.text == streamed[0]
    assert first.params.seed == 1234
    assert other.text != first.text


def test_unseeded_draft_reports_a_seed_that_reproduces_it(engine):
    (first,), _ = run(engine, [SamplingParams(temperature=0.9)])
    (again,), _ = run(engine, [first.params])
    assert first.params.seed is not None and again.text == first.text


def test_batch_of_mixed_temperatures_each_draft_as_if_alone(engine):
    drafts = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=5),
              SamplingParams(temperature=1.3, seed=6), SamplingParams(temperature=0.0, repetition_penalty=1.3)]
    batch, streamed = run(engine, drafts)
    assert [d.text for d in batch] == streamed
    for i, params in enumerate(drafts):
        (alone,), _ = run(engine, [params])
        assert batch[i].text == alone.text, f"draft {i} differs from its solo run"
    assert len({d.text for d in batch}) >= 3


def test_greedy_filters_agree(engine):
    (greedy,), _ = run(engine, [SamplingParams(temperature=0.0)])
    for params in (SamplingParams(temperature=1.5, top_k=1, seed=3), SamplingParams(temperature=1.5, min_p=1.0, seed=3),
                   SamplingParams(temperature=1.5, top_p=1e-6, seed=3)):
        (draft,), _ = run(engine, [params])
        assert draft.text == greedy.text, params


def test_max_tokens_and_stats(engine):
    (draft,), _ = run(engine, [SamplingParams(temperature=0.0)], max_tokens=5)
    if draft.finish_reason == "length":
        assert draft.stats.generated_tokens == 5
    assert draft.stats.generated_tokens <= 5
    assert draft.stats.prompt_tokens == len(engine.tokenizer.encode(engine.render_prompt(PROMPT)))
    assert draft.stats.decode_tok_s > 0 and draft.stats.prefill_tok_s > 0 and draft.stats.peak_memory_bytes > 0


def test_stop_string_cuts_the_text(engine):
    (full,), _ = run(engine, [SamplingParams(temperature=0.0)], max_tokens=32)
    stop = full.text[6:9]
    cut_at = full.text.find(stop)
    (draft,), streamed = run(engine, [SamplingParams(temperature=0.0)], max_tokens=32, stop_strings=(stop,))
    assert draft.finish_reason == "stop"
    assert draft.text == full.text[:cut_at] == streamed[0]


def test_cancel_stops_within_one_token_and_keeps_the_text(engine):
    (full,), _ = run(engine, [SamplingParams(temperature=0.0)], max_tokens=40)
    calls = []

    def cancel_after_three():
        calls.append(1)
        return len(calls) >= 3

    (draft,), streamed = run(engine, [SamplingParams(temperature=0.0)], max_tokens=40, should_cancel=cancel_after_three)
    assert draft.finish_reason == "cancelled"
    assert draft.stats.generated_tokens == 3
    assert full.text.startswith(draft.text) and draft.text == streamed[0]


def test_prompt_prefix_reuse_gives_the_same_result_as_a_fresh_engine(engine, tiny_models):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    run(engine, [SamplingParams()], prompt=PROMPT)  # leaves PROMPT's cache behind
    longer = PROMPT + " Make it about the harbour at dawn."
    (reused,), _ = run(engine, [SamplingParams()], prompt=longer)
    (fresh,), _ = run(Engine.load(model_dir, adapter_dir), [SamplingParams()], prompt=longer)
    assert reused.text == fresh.text


def test_adapter_toggle_invalidates_the_prompt_cache(engine, tiny_models):
    model_dir, _ = tiny_models["q4-g64-tied"]
    run(engine, [SamplingParams()])
    engine.adapter_enabled = False
    try:
        (toggled,), _ = run(engine, [SamplingParams()])
    finally:
        engine.adapter_enabled = True
    (base,), _ = run(Engine.load(model_dir), [SamplingParams()])
    assert toggled.text == base.text


def test_engine_lives_in_a_worker_thread(tiny_models):
    """Loading and generating in a non-main thread works; touching the engine from another thread is refused."""
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    result = {}

    def worker():
        try:
            engine = Engine.load(model_dir, adapter_dir)
            result["engine"] = engine
            result["text"] = run(engine, [SamplingParams(temperature=0.0)], max_tokens=8)[0][0].text
        except Exception as e:  # surfaced in the assertion below
            result["error"] = e

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=120)
    assert "error" not in result and result["text"]
    with pytest.raises(RuntimeError, match="thread"):
        run(result["engine"], [SamplingParams()])


def test_token_logprobs_match_the_generation(engine):
    prompt_ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    (draft,), _ = run(engine, [SamplingParams(temperature=0.0)], max_tokens=6)
    ids = prompt_ids + engine.tokenizer.encode(draft.text)
    logprobs = engine.token_logprobs(ids)
    assert len(logprobs) == len(ids) - 1
    for k in (len(prompt_ids), len(ids) - 1):  # the first generated token and the last one
        logits = ours_last_logits(engine, ids[:k])
        expected = (logits - mx.logsumexp(logits))[ids[k]].item()
        assert logprobs[k - 1] == pytest.approx(expected, abs=1e-4)


def test_top_k_beyond_the_vocabulary_is_off(engine):
    """A top_k past the vocabulary keeps every token (it never indexes past the logits), as top_k = 0 does."""
    (off,), _ = run(engine, [SamplingParams(temperature=1.0, seed=4)])
    (huge,), _ = run(engine, [SamplingParams(temperature=1.0, top_k=10**12, seed=4)])
    assert huge.text == off.text


def test_prompt_and_max_tokens_beyond_the_context_are_refused(engine):
    from inference import ParameterError

    context = engine.model.config.max_position_embeddings
    with pytest.raises(ParameterError, match=f"context of {context} positions"):
        run(engine, [SamplingParams()], max_tokens=context)


def test_logits_that_are_not_finite_stop_the_generation_with_one_line(tiny_models, tmp_path):
    """Logits that are not finite used to decode as '!!!!' (token 0) and be saved; now the generation stops with a
    clear error. The weights are finite (NaN in them is refused at load) but so large that the activations overflow."""
    import shutil

    from inference import InferenceError

    model_dir = shutil.copytree(tiny_models["bf16-2shards"][0], tmp_path / "nan")
    shard = next(model_dir.glob("model-*.safetensors"))
    weights = mx.load(str(shard))
    name = next(n for n in weights if n.endswith("mlp.down_proj.weight"))
    weights[name] = mx.full(weights[name].shape, 3e38, dtype=weights[name].dtype)
    mx.save_safetensors(str(shard), weights, metadata={"format": "mlx"})
    broken = Engine.load(model_dir)
    with pytest.raises(InferenceError, match="not finite") as info:
        run(broken, [SamplingParams(temperature=0.0)], max_tokens=4)
    assert "\n" not in str(info.value) and str(model_dir) in str(info.value)
