"""Conversations and prefill: rendered text and token ids equal mlx_lm's and transformers' on the real Qwen3
tokenizer; a refinement prefills only the tokens its prompt does not share with the cached one."""

import shutil

import pytest
from fixtures import QWEN_TOKENIZER_DIR

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
def qwen_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("qwen3-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN_TOKENIZER_DIR / name, target / name)
    return target


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return Tokenizer(qwen_dir)


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
