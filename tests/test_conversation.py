"""Conversations and prefill: rendered text and token ids equal mlx_lm's and transformers' on the real Qwen3
tokenizer; a refinement prefills only the tokens its prompt does not share with the cached one."""

import shutil

import mlx.core as mx
import pytest

from inference import ParameterError
from inference.tokenizer import Tokenizer

USER_A = "Write a post about autumn in Kyoto 🍁"
DRAFT = "Red maples over the Kamo river, and tea that tastes of smoke. #kyoto"
USER_B = "make it shorter"


def conversation(system: str | None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": USER_A}, {"role": "assistant", "content": DRAFT},
            {"role": "user", "content": USER_B}]


@pytest.fixture(scope="module")
def oracles(qwen_dir):
    """mlx_lm's TokenizerWrapper (what mlx_lm.generate renders with) and transformers' AutoTokenizer."""
    from mlx_lm.utils import load_tokenizer
    from transformers import AutoTokenizer

    return load_tokenizer(qwen_dir), AutoTokenizer.from_pretrained(str(qwen_dir))


SYSTEMS = [None, "", "You write short, warm posts."]
SYSTEM_IDS = ["no-system", "empty-system", "system"]


@pytest.mark.parametrize("system", SYSTEMS, ids=SYSTEM_IDS)
def test_three_message_conversation_renders_as_mlx_lm_and_transformers(qwen, oracles, system):
    wrapper, reference = oracles
    messages = conversation(system)
    ours = qwen.render_messages(messages)
    kwargs = {"tokenize": False, "add_generation_prompt": True, "enable_thinking": False}
    assert ours == wrapper.apply_chat_template(messages, **kwargs) == reference.apply_chat_template(messages, **kwargs)
    assert ours.endswith(f"<|im_start|>user\n{USER_B}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert qwen.encode(ours) == reference.encode(ours, add_special_tokens=False)
    if system is None:
        assert "system" not in ours
    else:
        assert ours.startswith(f"<|im_start|>system\n{system}<|im_end|>\n")


@pytest.mark.parametrize("prefill", ["Red maples", "Red maples ", "", "  leading spaces and 漢字, then"])
@pytest.mark.parametrize("system", SYSTEMS, ids=SYSTEM_IDS)
def test_prefill_renders_as_mlx_lm_generate_prefill_response(qwen, oracles, system, prefill):
    """mlx_lm.generate --prefill-response: the assistant message appended, continue_final_message=True."""
    wrapper, reference = oracles
    head = [{"role": "system", "content": system}] if system is not None else []
    messages = [*head, {"role": "user", "content": USER_A}]
    ours = qwen.render_messages(messages, prefill=prefill)
    with_prefill = [*messages, {"role": "assistant", "content": prefill}]
    kwargs = {"tokenize": False, "continue_final_message": True, "add_generation_prompt": False}
    expected = wrapper.apply_chat_template(with_prefill, **kwargs)
    assert ours == expected == reference.apply_chat_template(with_prefill, **kwargs)
    assert ours.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" + prefill)
    assert "<|im_end|>" not in ours.rsplit("<|im_start|>", 1)[1]
    assert qwen.encode(ours) == reference.encode(ours, add_special_tokens=False)


def test_prefill_after_a_refinement_renders_as_transformers(qwen, oracles):
    _, reference = oracles
    messages = conversation("")
    ours = qwen.render_messages(messages, prefill="Maples")
    expected = reference.apply_chat_template([*messages, {"role": "assistant", "content": "Maples"}], tokenize=False,
                                             continue_final_message=True)
    assert ours == expected


def test_the_draft_turn_is_rendered_without_its_empty_think_block(qwen):
    """Qwen3's template drops the think block of an assistant turn before the last user message: the refinement's
    prompt shares the first prompt's tokens only up to that turn's header (what prefix reuse can count on)."""
    first = qwen.encode(qwen.render_messages(conversation("")[:2]))
    refined = qwen.encode(qwen.render_messages(conversation("")))
    shared = next(i for i, (a, b) in enumerate(zip(first, refined, strict=False)) if a != b)
    assert qwen.decode(first[:shared]).endswith("<|im_start|>assistant\n")
    assert qwen.decode(refined[shared:]).startswith(DRAFT)


@pytest.mark.parametrize(("messages", "problem"), [
    ([], "at least one message"),
    ([{"role": "robot", "content": "hi"}], "message 1 must be a dict whose role"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant"}], "message 2 \\(assistant\\) must have text"),
    ("hello", "at least one message"),
])
def test_malformed_conversations_are_refused_in_one_line(qwen, messages, problem):
    with pytest.raises(ParameterError, match=problem) as info:
        qwen.render_messages(messages)
    assert "\n" not in str(info.value)


def test_a_template_that_drops_the_final_message_cannot_be_continued(tmp_path, qwen_dir):
    import json

    from inference import TokenizerError

    shutil.copy(qwen_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    template = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    with pytest.raises(TokenizerError, match="cannot continue it"):
        Tokenizer(tmp_path).render_messages([{"role": "user", "content": "hi"}], prefill="Sure")


# --- prefix reuse: a refinement prefills only its new tokens ------------------------------------------------------
def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def generate(engine, prompt: str, max_tokens: int = 16):
    from inference import DraftDone, GenerationRequest, SamplingParams

    request = GenerationRequest(prompt, [SamplingParams(temperature=0.0)], max_tokens=max_tokens)
    return next(e for e in engine.generate(request) if isinstance(e, DraftDone))


@pytest.fixture
def fixture_engine(tiny_models):
    from inference import Engine

    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    return Engine.load(model_dir, adapter_dir)


def test_engine_renders_conversations_as_mlx_lm(fixture_engine, tiny_models):
    from mlx_lm.utils import load_tokenizer

    wrapper = load_tokenizer(tiny_models["q4-g64-tied"][0])
    messages = conversation("")
    assert fixture_engine.render_messages(messages) == wrapper.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert fixture_engine.render_messages(messages[:1], prefill="Red") == wrapper.apply_chat_template(
        [*messages[:1], {"role": "assistant", "content": "Red"}], tokenize=False, continue_final_message=True)
    assert fixture_engine.render_prompt(USER_A, "") == fixture_engine.render_messages(conversation("")[:2])


def test_a_refinement_prefills_only_its_new_tokens(fixture_engine, tiny_models):
    """The rule (PromptCache): prefilled = n - min(p, n - 1), p the common token prefix with the cached prompt."""
    from inference import Engine

    engine = fixture_engine
    first_prompt = engine.render_messages(conversation("")[:2])
    first = generate(engine, first_prompt)
    assert first.stats.prefilled_tokens == first.stats.prompt_tokens  # a fresh engine: everything is computed
    refined_prompt = engine.render_messages([*conversation("")[:2], {"role": "assistant", "content": first.text},
                                             {"role": "user", "content": USER_B}])
    old, new = engine.tokenizer.encode(first_prompt), engine.tokenizer.encode(refined_prompt)
    shared = common_prefix(old, new)
    assert shared > len(old) // 2, "the conversation so far is shared"
    refined = generate(engine, refined_prompt)
    assert refined.stats.prompt_tokens == len(new)
    assert refined.stats.prefilled_tokens == len(new) - shared
    fresh = generate(Engine.load(*tiny_models["q4-g64-tied"]), refined_prompt)
    assert refined.text == fresh.text and fresh.stats.prefilled_tokens == len(new)
    again = generate(engine, refined_prompt)  # the same prompt: one token runs, for its logits
    assert again.stats.prefilled_tokens == 1 and again.text == refined.text


def test_a_refinement_after_other_prompts_still_reuses_its_prefix(fixture_engine):
    engine = fixture_engine
    first_prompt = engine.render_messages(conversation(None)[:1])
    first = generate(engine, first_prompt)
    for other in ("Something else entirely", "And a third prompt"):
        generate(engine, engine.render_prompt(other, system="Another persona."))
    refined_prompt = engine.render_messages([*conversation(None)[:1], {"role": "assistant", "content": first.text},
                                             {"role": "user", "content": USER_B}])
    new = engine.tokenizer.encode(refined_prompt)
    refined = generate(engine, refined_prompt)
    assert refined.stats.prefilled_tokens == len(new) - common_prefix(engine.tokenizer.encode(first_prompt), new)


def test_prompt_caches_are_kept_per_adapter(fixture_engine):
    """The keys and values depend on the adapter: a prompt run with the adapter off shares nothing with its run on."""
    engine = fixture_engine
    prompt = engine.render_messages(conversation("")[:2])
    generate(engine, prompt)
    engine.adapter_enabled = False
    assert generate(engine, prompt).stats.prefilled_tokens == len(engine.tokenizer.encode(prompt))
    engine.adapter_enabled = True
    assert generate(engine, prompt).stats.prefilled_tokens == 1


# --- greedy parity on the demo model: a refinement and a prefill, as mlx_lm generates them ------------------------
@pytest.fixture(scope="module")
def demo():
    from parity import mlx_lm_model

    from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR
    from inference import Engine

    return Engine.load(DEMO_MODEL_DIR, DEMO_ADAPTER_DIR), mlx_lm_model(DEMO_MODEL_DIR, DEMO_ADAPTER_DIR)


def test_a_refinement_and_a_prefill_generate_as_mlx_lm_does(demo):
    """mlx_lm renders with its TokenizerWrapper (--prefill-response: continue_final_message) and decodes greedily;
    our engine renders with render_messages, reusing the first prompt's cache for the refinement."""
    from parity import mlx_lm_greedy, mlx_lm_text

    engine, (model, wrapper) = demo
    first = [{"role": "user", "content": "Write a post."}]
    draft = generate(engine, engine.render_messages(first), max_tokens=32)
    refinement = [*first, {"role": "assistant", "content": draft.text}, {"role": "user", "content": USER_B}]
    cases = [
        (engine.render_messages(refinement),
         wrapper.apply_chat_template(refinement, tokenize=False, add_generation_prompt=True, enable_thinking=False)),
        (engine.render_messages(first, prefill="The sea"),
         wrapper.apply_chat_template([*first, {"role": "assistant", "content": "The sea"}], tokenize=False,
                                     continue_final_message=True)),
    ]
    for ours_prompt, mlx_lm_prompt in cases:
        assert ours_prompt == mlx_lm_prompt
        ours = generate(engine, ours_prompt, max_tokens=32)
        ids = engine.tokenizer.encode(ours_prompt)
        assert ids == wrapper.encode(mlx_lm_prompt)  # as mlx_lm.generate tokenizes a prompt string (no bos for Qwen3)
        assert ours.text == mlx_lm_text(wrapper, mlx_lm_greedy(model, wrapper, ids, 32))
    assert ours.stats.prefilled_tokens < ours.stats.prompt_tokens  # the prefill prompt extends the first one's prefix


def test_the_prompt_cache_keeps_older_prompts_only_within_its_position_budget(fixture_engine):
    """Entries other than the latest hold at most max_kept_positions together: memory stays near one prompt's."""
    from inference.batching import PromptCache

    engine = fixture_engine
    cache = PromptCache(engine.model, max_entries=4, max_kept_positions=300)
    prompts = [engine.tokenizer.encode(engine.render_prompt(f"{word} " * 20)) for word in ("sea", "boat", "rain")]
    for tokens in prompts:
        layers, reused = cache.start(tokens, None)
        engine.model(mx.array([tokens[reused:]]), layers)
    # each entry's capacity is 256 positions: two older ones would hold 512 > 300, so only the last two are kept
    assert [e.tokens for e in cache.entries] == prompts[1:]
    assert all(e.cache[0].offset == len(e.tokens) for e in cache.entries)
