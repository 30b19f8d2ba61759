"""check_tokenizer lists every tokenizer problem that would stop or change a generation (what `inspect` reports), and
the tokenizer files are read strictly: wrong JSON types, special files and odd paths each get their own line."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from fixtures import QWEN_TOKENIZER_DIR

from inference import TokenizerError
from inference.tokenizer import Tokenizer, check_tokenizer

QWEN_CONFIG = json.loads((QWEN_TOKENIZER_DIR / "tokenizer_config.json").read_text())


@pytest.fixture
def qwen_dir(qwen_dir, tmp_path):
    """conftest's real Qwen3 tokenizer, copied for each test: these tests rewrite its files."""
    return shutil.copytree(qwen_dir, tmp_path / "tok")


def write_config(directory, **changes):
    config = {**QWEN_CONFIG, **changes}
    for key in [k for k, v in changes.items() if v is ...]:
        del config[key]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def test_the_real_qwen_tokenizer_has_no_problems(qwen_dir):
    assert check_tokenizer(qwen_dir) == []


def test_missing_tokenizer_json_is_reported_with_the_rest_still_checked(qwen_dir):
    (qwen_dir / "tokenizer.json").unlink()
    write_config(qwen_dir, chat_template=...)
    problems = check_tokenizer(qwen_dir)
    assert problems[0] == f"{qwen_dir / 'tokenizer.json'}: file not found"
    assert len(problems) == 2 and "has no chat template" in problems[1]


def test_unparsable_tokenizer_json(qwen_dir):
    (qwen_dir / "tokenizer.json").write_text('{"model": ')
    [problem] = check_tokenizer(qwen_dir)
    assert problem.startswith(f"{qwen_dir / 'tokenizer.json'}: cannot be parsed") and "\n" not in problem


def test_unparsable_tokenizer_config(qwen_dir):
    (qwen_dir / "tokenizer_config.json").write_text("{,}")
    [problem] = check_tokenizer(qwen_dir)
    assert problem.startswith(f"{qwen_dir / 'tokenizer_config.json'}: not valid JSON")


@pytest.mark.parametrize("template, expected", [
    ("{% for m in messages %}{{ m.content }", "chat template line 1: unexpected '}'"),
    ("{% if messages[0].role != 'system' %}{{ raise_exception('a system message is required') }}{% endif %}",
     "chat template failed: a system message is required"),
    ("{{ messages[0].content + 1 }}", "chat template failed: TypeError: can only concatenate str"),
    ("{{ messages[0].content.nope() }}", "chat template failed: 'str object' has no attribute 'nope'"),
    ("{{ 1 // 0 }}", "chat template failed: ZeroDivisionError"),
    ("{% if false %}x{% endif %}", "the chat template renders an empty prompt"),
    ("<|im_start|>user\n{{ messages[0].contnet }}<|im_end|>", "the chat template leaves the user's message out"),
], ids=["syntax", "raise-exception", "type-error", "undefined-call", "zero-division", "empty", "message-left-out"])
def test_a_template_that_cannot_render_one_message(qwen_dir, template, expected):
    write_config(qwen_dir, chat_template=template)
    [problem] = check_tokenizer(qwen_dir)
    assert problem.startswith(f"{qwen_dir / 'tokenizer_config.json'}: ") and expected in problem, problem


def test_a_broken_chat_template_jinja_is_named(qwen_dir):
    (qwen_dir / "chat_template.jinja").write_text("{{ messages[0].content ")
    [problem] = check_tokenizer(qwen_dir)
    assert problem.startswith(f"{qwen_dir / 'chat_template.jinja'}: chat template line 1")


def test_no_eos_anywhere_unless_the_config_gives_ids(qwen_dir):
    write_config(qwen_dir, eos_token=...)
    [problem] = check_tokenizer(qwen_dir)
    assert problem.startswith(f"{qwen_dir}: no eos token")
    assert check_tokenizer(qwen_dir, eos_token_ids={151645}) == []  # config.json's eos_token_id is enough


def test_an_eos_that_is_not_a_token(qwen_dir):
    write_config(qwen_dir, eos_token="<|nope|>")
    assert check_tokenizer(qwen_dir) == [
        f"{qwen_dir / 'tokenizer.json'}: the eos token '<|nope|>' is not in its vocabulary"
    ]


@pytest.mark.parametrize("in_config, in_map", [("<|im_end|>", "<|endoftext|>"), (..., "<|endoftext|>"),
                                               ("<|im_end|>", ...),
                                               (..., {"content": "<|endoftext|>", "special": True})],
                         ids=["both", "map-only", "config-only", "map-object"])
def test_eos_from_tokenizer_config_or_special_tokens_map_as_transformers_and_mlx_lm(qwen_dir, in_config, in_map):
    """tokenizer_config.json's eos_token wins; special_tokens_map.json's counts when the config names none."""
    from mlx_lm.utils import load_tokenizer
    from transformers import AutoTokenizer

    write_config(qwen_dir, eos_token=in_config)
    if in_map is not ...:
        (qwen_dir / "special_tokens_map.json").write_text(json.dumps({"eos_token": in_map}))
    ours = Tokenizer(qwen_dir)
    reference = AutoTokenizer.from_pretrained(str(qwen_dir))
    assert ours.eos_token_ids == {reference.eos_token_id} == set(load_tokenizer(qwen_dir).eos_token_ids)
    assert check_tokenizer(qwen_dir) == []


def test_an_eos_given_as_an_added_token_object(qwen_dir):
    write_config(qwen_dir, eos_token={"__type": "AddedToken", "content": "<|endoftext|>", "special": True})
    assert Tokenizer(qwen_dir).eos_token_ids == {151643}


# --- wrong JSON types: each its own line, never "unexpected TypeError" --------------------------------------------

@pytest.mark.parametrize("changes, expected", [
    ({"chat_template": 5}, "chat_template must be a string or a list of named templates, not a number"),
    ({"chat_template": {"default": "x"}}, "chat_template must be a string or a list of named templates, not an object"),
    ({"chat_template": ["{{ x }}"]}, "chat_template list must hold objects with a 'name' and a 'template'"),
    ({"chat_template": [{"name": "default", "template": 7}]}, "chat_template 'default' must be a string, not a number"),
    ({"eos_token": ["<|im_end|>"]}, "eos_token must be a string or an object with a 'content' string, not a list"),
    ({"eos_token": {"content": 5}}, "eos_token is an object without a 'content' string"),
    ({"bos_token": 7}, "bos_token must be a string or an object with a 'content' string, not a number"),
], ids=["template-number", "template-object", "template-list-of-strings", "named-template-number", "eos-list",
        "eos-content-number", "bos-number"])
def test_wrong_types_in_tokenizer_config(qwen_dir, changes, expected):
    write_config(qwen_dir, **changes)
    with pytest.raises(TokenizerError) as info:
        Tokenizer(qwen_dir)
    assert str(info.value) == f"{qwen_dir / 'tokenizer_config.json'}: {expected}"
    assert check_tokenizer(qwen_dir) == [str(info.value)]


def test_wrong_types_elsewhere(qwen_dir):
    (qwen_dir / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: expected a JSON object"):
        Tokenizer(qwen_dir)
    write_config(qwen_dir, eos_token=...)
    (qwen_dir / "special_tokens_map.json").write_text(json.dumps({"eos_token": 3}))
    with pytest.raises(TokenizerError, match="special_tokens_map.json: eos_token must be a string"):
        Tokenizer(qwen_dir)
    (qwen_dir / "special_tokens_map.json").unlink()
    (qwen_dir / "chat_template.jinja").write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(TokenizerError, match="chat_template.jinja: is not UTF-8 text"):
        Tokenizer(qwen_dir)


# --- special files and odd paths --------------------------------------------------------------------------------------

def test_a_fifo_tokenizer_json_is_refused_without_blocking(qwen_dir):
    (qwen_dir / "tokenizer.json").unlink()
    os.mkfifo(qwen_dir / "tokenizer.json")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = textwrap.dedent(f"""
        from inference.tokenizer import check_tokenizer
        print(check_tokenizer({str(qwen_dir)!r}))
    """)
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                            cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert result.stdout.strip() == str([f"{qwen_dir / 'tokenizer.json'}: is a named pipe (FIFO), not a regular file"])


def test_a_directory_template_and_a_symlink_loop(qwen_dir):
    (qwen_dir / "chat_template.jinja").mkdir()
    with pytest.raises(TokenizerError, match="chat_template.jinja: is a directory, not a regular file"):
        Tokenizer(qwen_dir)
    (qwen_dir / "chat_template.jinja").rmdir()
    (qwen_dir / "tokenizer.json").unlink()
    (qwen_dir / "tokenizer.json").symlink_to(qwen_dir / "tokenizer.json")
    with pytest.raises(TokenizerError, match="tokenizer.json: too many levels of symbolic links"):
        Tokenizer(qwen_dir)
