"""Several adapters for one base model: picked per request and per row of one batch, loaded at run time; each row
equals its adapter alone and mlx_lm with that adapter."""

import mlx.core as mx
import pytest
from fixtures import write_adapter
from parity import mlx_lm_greedy, mlx_lm_last_logits, mlx_lm_model, mlx_lm_text

from inference import DraftDone, Engine, GenerationRequest, ParameterError, SamplingParams

PROMPT = "Write a post about the small boats."
TOKENS = 24


@pytest.fixture(scope="module")
def two_adapters(tiny_models, tmp_path_factory):
    """The fixture model, its adapter ("A", all seven projections of the last 2 blocks) and a second one ("B":
    another seed, attention only, another rank and scale)."""
    model_dir, adapter_a = tiny_models["q4-g64-tied"]
    adapter_b = write_adapter(tmp_path_factory.mktemp("adapters") / "B", model_dir, rank=4,
                              scale=10.0, keys=["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"], seed=7)
    return model_dir, adapter_a, adapter_b


@pytest.fixture(scope="module")
def engine(two_adapters):
    model_dir, adapter_a, adapter_b = two_adapters
    return Engine.load(model_dir, adapters={"A": adapter_a, "B": adapter_b})


def greedy(engine, adapters, params=None, max_tokens=TOKENS):
    drafts = params or [SamplingParams(temperature=0.0)] * (len(adapters) if adapters else 1)
    request = GenerationRequest(engine.render_prompt(PROMPT), drafts, max_tokens=max_tokens, adapters=adapters)
    done = {e.draft: e for e in engine.generate(request) if isinstance(e, DraftDone)}
    return [done[i] for i in range(len(drafts))]


def test_a_batch_of_base_and_two_adapters_equals_each_alone_and_mlx_lm(engine, two_adapters):
    model_dir, adapter_a, adapter_b = two_adapters
    ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    batch = greedy(engine, (None, "A", "B"))
    alone = [greedy(engine, (name,))[0] for name in (None, "A", "B")]
    assert [d.text for d in batch] == [d.text for d in alone]
    for done, adapter_dir in zip(batch, (None, adapter_a, adapter_b), strict=True):
        model, tokenizer = mlx_lm_model(model_dir, adapter_dir)
        assert done.text == mlx_lm_text(tokenizer, mlx_lm_greedy(model, tokenizer, ids, TOKENS))
    assert len({d.text for d in batch}) == 3, "the adapters change the output"


def test_rows_with_different_adapters_give_mlx_lm_logits(engine, two_adapters):
    """One forward pass whose rows run base / A / B / A (prompt, then one-token steps with their per-row masks)."""
    model_dir, adapter_a, adapter_b = two_adapters
    ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    rows = (None, "A", "B", "A")
    cache = engine.model.new_cache(len(rows))
    ours = [engine.model(mx.array([ids] * len(rows)), cache, rows)]
    steps = mx.argmax(ours[0], axis=-1)[:, None]
    ours.append(engine.model.decode(steps, cache, rows))
    for row, adapter_dir in enumerate((None, adapter_a, adapter_b, adapter_a)):
        model, _ = mlx_lm_model(model_dir, adapter_dir)
        expected = [mlx_lm_last_logits(model, ids), mlx_lm_last_logits(model, [*ids, steps[row, 0].item()])]
        for logits, reference in zip(ours, expected, strict=True):
            assert mx.abs(logits[row] - reference).max().item() < 1e-4


def test_sampled_drafts_keep_their_seed_across_adapters(engine):
    """A spread on one seed: each row samples as it would alone, whatever adapters its neighbours run."""
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=42)] * 3
    batch = greedy(engine, ("B", None, "A"), params)
    alone = [greedy(engine, (name,), [params[0]])[0] for name in ("B", None, "A")]
    assert [d.text for d in batch] == [d.text for d in alone]


def test_requests_without_adapters_follow_the_active_adapter(two_adapters):
    model_dir, adapter_a, adapter_b = two_adapters
    engine = Engine.load(model_dir, adapter_a, adapters={"B": adapter_b})
    default = adapter_a.name  # adapter_dir is named by its directory
    assert engine.adapter_names == (default, "B") and engine.active_adapter == default and engine.adapter_enabled
    assert engine.adapter_dir == adapter_a
    by_name = {name: greedy(engine, (name,))[0].text for name in (None, default, "B")}
    assert greedy(engine, None)[0].text == by_name[default]
    engine.active_adapter = "B"
    assert greedy(engine, None)[0].text == by_name["B"] and engine.adapter_dir == adapter_b
    engine.adapter_enabled = False
    assert greedy(engine, None)[0].text == by_name[None]
    with pytest.raises(ValueError, match="no adapter named 'C'"):
        engine.active_adapter = "C"


def test_an_adapter_loaded_at_run_time_equals_one_loaded_with_the_model(engine, two_adapters):
    model_dir, adapter_a, adapter_b = two_adapters
    late = Engine.load(model_dir)
    assert late.adapter_names == () and not late.has_adapter
    base = greedy(late, None)[0].text
    late.load_adapter("B", adapter_b)
    assert late.adapter_names == ("B",) and late.active_adapter == "B" and not late.adapter_enabled
    assert greedy(late, None)[0].text == base, "a loaded adapter starts switched off"
    assert greedy(late, ("B",))[0].text == greedy(engine, ("B",))[0].text
    late.load_adapter("B", adapter_a)  # replaced under the same name: its cached prompts are dropped too
    assert greedy(late, ("B",))[0].text == greedy(engine, ("A",))[0].text


@pytest.mark.parametrize(("adapters", "problem"), [
    (("A",), "one adapter name \\(or None\\) per draft: 2"),
    (("A", "C"), "no adapter named 'C' is loaded \\(loaded: A, B\\)"),
])
def test_bad_adapter_choices_are_refused_at_submit(engine, adapters, problem):
    request = GenerationRequest(engine.render_prompt(PROMPT), [SamplingParams()] * 2, adapters=adapters)
    with pytest.raises(ParameterError, match=problem):
        next(engine.generate(request))


def test_two_adapters_with_one_name_are_refused(two_adapters):
    from inference import AdapterError

    model_dir, adapter_a, adapter_b = two_adapters
    with pytest.raises(AdapterError, match=f"two adapters are named '{adapter_a.name}'"):
        Engine.load(model_dir, adapter_a, adapters={adapter_a.name: adapter_b})
