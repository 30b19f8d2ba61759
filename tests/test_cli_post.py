"""`bobby-tui post` on the demo model: drafts, JSON, seeds, streaming, and greedy parity with mlx_lm."""

import json

import pytest
from cli_helpers import demo_dirs, run_cli

from bobby_tui.composer import retry_seed
from bobby_tui.paths import db_path
from bobby_tui.storage import Store

PROMPT = "Write a post about the sea."
JSON_FIELDS = {"text", "prompt", "temperature", "top_p", "seed", "prompt_tokens", "generated_tokens", "decode_tok_s",
               "model", "adapter"}


def test_count_drafts_are_printed_and_recorded_for_the_demo_by_default():
    model_dir, adapter_dir = demo_dirs()
    result = run_cli("post", 3, PROMPT, "--max-tokens", 24)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress bar, no notes
    blocks = result.stdout.split("── draft ")[1:]
    assert sorted(block.split("/")[0] for block in blocks) == ["1", "2", "3"]
    printed = {block.split("\n", 1)[1].strip() for block in blocks}
    with Store(db_path()) as store:
        rows = store.history()
    assert len(rows) == 3
    assert {(r.prompt, r.model, r.adapter) for r in rows} == {(PROMPT, model_dir.name, adapter_dir.name)}
    assert {r.text.strip() for r in rows} == printed
    for row in rows:  # the header names each draft's history id
        assert f"#{row.id} · seed {row.seed}" in result.stdout


@pytest.fixture(scope="module")
def json_runs():
    """The same seeded two-draft command, twice."""
    args = ("post", 2, PROMPT, "--json", "--seed", 11, "--max-tokens", 12, "--temperature", 1.0, "--no-history")
    return [run_cli(*args) for _ in range(2)]


def test_json_lines_carry_the_fields(json_runs):
    result = json_runs[0]
    assert result.returncode == 0, result.stderr
    drafts = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(d["draft"] for d in drafts) == [0, 1]
    model_dir, adapter_dir = demo_dirs()
    for d in drafts:
        assert JSON_FIELDS <= d.keys()
        assert (d["prompt"], d["temperature"], d["top_p"]) == (PROMPT, 1.0, 0.9)
        assert (d["model"], d["adapter"], d["id"]) == (model_dir.name, adapter_dir.name, None)
        assert 0 < d["generated_tokens"] <= 12 and d["prompt_tokens"] > 0 and d["decode_tok_s"] > 0
        assert d["seed"] == 11 + d["draft"]  # the user's S+i, whatever attempt produced the text
        assert d["attempt_seed"] == retry_seed(11 + d["draft"], d["attempts"])
    assert any(d["attempts"] > 1 for d in drafts)  # 12 tokens are short of min_length: drafts were regenerated
    assert not db_path().exists() or Store(db_path()).history() == []  # --no-history


def test_a_regenerated_draft_reports_the_users_seed_and_its_attempt_in_output_and_history():
    # 6 tokens never reach min_length (80 characters): the draft is generated 1 + retries (2) times
    result = run_cli("post", PROMPT, "--seed", 7, "--max-tokens", 6, "--temperature", 1.0, "--json")
    assert result.returncode == 0, result.stderr
    (printed,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (printed["seed"], printed["attempts"], printed["attempt_seed"]) == (7, 3, retry_seed(7, 3))
    (row,) = [json.loads(line) for line in run_cli("history", "--json").stdout.splitlines()]
    assert (row["seed"], row["attempts"], row["attempt_seed"]) == (7, 3, retry_seed(7, 3))
    plain = run_cli("post", 2, PROMPT, "--seed", 7, "--max-tokens", 6, "--temperature", 1.0, "--no-history")
    assert f"seed 7 · attempt 3 (seed {retry_seed(7, 3)}) ──" in plain.stdout
    assert f"seed 8 · attempt 3 (seed {retry_seed(8, 3)}) ──" in plain.stdout


def test_seeded_drafts_are_reproducible(json_runs):
    first, second = ([json.loads(line) for line in run.stdout.splitlines()] for run in json_runs)
    key = lambda d: d["draft"]  # noqa: E731 - drafts print in finishing order
    texts_and_seeds = [[(d["text"], d["seed"]) for d in sorted(run, key=key)] for run in (first, second)]
    assert texts_and_seeds[0] == texts_and_seeds[1]


@pytest.fixture(scope="module")
def greedy_raw():
    model_dir, adapter_dir = demo_dirs()
    args = ("post", PROMPT, "--model", model_dir, "--adapter", adapter_dir, "--temperature", 0, "--raw",
            "--max-tokens", 40, "--no-history")
    return args, run_cli(*args)


def test_greedy_raw_output_equals_mlx_lm(greedy_raw):
    from mlx_lm import generate
    from parity import mlx_lm_model

    _, result = greedy_raw
    assert result.returncode == 0, result.stderr
    model_dir, adapter_dir = demo_dirs()
    model, tokenizer = mlx_lm_model(model_dir, adapter_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           enable_thinking=False, tokenize=False)
    expected = generate(model, tokenizer, prompt, max_tokens=40)
    assert expected.strip()
    assert result.stdout == expected + "\n"


def test_streaming_prints_the_same_text(greedy_raw):
    args, plain = greedy_raw
    streamed = run_cli(*args, "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == plain.stdout


@pytest.fixture(scope="module")
def qwen3_renderers():
    """Ours (the messages compose renders) and the two references, each on the real Qwen3 tokenizer files."""
    from fixtures import QWEN_TOKENIZER_DIR
    from mlx_lm.utils import load_tokenizer
    from transformers import AutoTokenizer

    from bobby_tui.composer import conversation
    from inference.tokenizer import Tokenizer

    ours = Tokenizer(QWEN_TOKENIZER_DIR)
    return (lambda user, system: ours.render_messages(conversation(user, system)),
            load_tokenizer(QWEN_TOKENIZER_DIR), AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER_DIR)))


ODD_PROMPTS = ["  Write about tea  ", "Line one\n\n  line two\t", "1984", "tabs\tand  two  spaces", "末尾の空白　"]


@pytest.mark.parametrize("system", [None, "", "  You are terse.\n"], ids=["no-system", "empty-system", "system"])
@pytest.mark.parametrize("prompt", ODD_PROMPTS)
def test_the_prompt_post_renders_is_mlx_lms_rendering_of_the_same_messages(qwen3_renderers, prompt, system):
    from bobby_tui.cli import _count_and_prompt, _system_prompt, build_parser
    from bobby_tui.config import Config

    render, mlx_lm_tokenizer, transformers_tokenizer = qwen3_renderers
    args = build_parser().parse_args(["post", prompt] + ([] if system is None else ["--system", system]))
    count, user = _count_and_prompt(args.count, args.words, Config())
    ours = render(user, _system_prompt(args, Config()))
    system_message = [] if system is None else [{"role": "system", "content": system}]
    messages = [*system_message, {"role": "user", "content": prompt}]
    options = dict(tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert count == 1
    assert ours == mlx_lm_tokenizer.apply_chat_template(messages, **options)
    assert ours == transformers_tokenizer.apply_chat_template(messages, **options)


@pytest.mark.parametrize("system", [None, ""], ids=["no-system", "empty-system"])
def test_post_sends_the_prompt_unchanged_to_the_model(system):
    from mlx_lm.utils import load_tokenizer

    prompt = "  Write about tea,\n\n  twice  "
    result = run_cli("post", prompt, *([] if system is None else ["--system", system]), "--json", "--raw",
                     "--temperature", 0, "--max-tokens", 2, "--no-history")
    assert result.returncode == 0, result.stderr
    (draft,) = [json.loads(line) for line in result.stdout.splitlines()]
    system_message = [] if system is None else [{"role": "system", "content": system}]
    messages = [*system_message, {"role": "user", "content": prompt}]
    expected_ids = load_tokenizer(demo_dirs()[0]).apply_chat_template(messages, add_generation_prompt=True,
                                                                      enable_thinking=False)
    assert (draft["prompt"], draft["prompt_tokens"]) == (prompt, len(expected_ids))


def test_a_number_alone_is_the_prompt_not_the_count():
    result = run_cli("post", "1984", "--json", "--max-tokens", 4, "--no-history")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["prompt"] for line in result.stdout.splitlines()] == ["1984"]
    counted = run_cli("post", "-n", 2, "1984", "--json", "--max-tokens", 4, "--no-history")
    assert [json.loads(line)["prompt"] for line in counted.stdout.splitlines()] == ["1984", "1984"]


def test_special_tokens_the_model_writes_reach_no_post_stream_history_or_export_unless_raw(tmp_path):
    from bobby_tui.paths import config_path

    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text("[postprocess]\nmin_length = 0\n")  # no regeneration: the first attempt is the draft
    # At this seed and temperature the demo writes <|im_start|> (at the default temperature it never did in 160 seeds)
    args = ("post", "Write a post.", "--seed", 33, "--max-tokens", 60, "--temperature", 1.6, "--top-p", 1.0)
    raw = run_cli(*args, "--raw", "--no-history")
    assert raw.returncode == 0 and "<|im_start|>" in raw.stdout
    expected = raw.stdout[:-1].replace("<|im_start|>", "").strip()
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"] == expected
    streamed = run_cli(*args, "--stream", "--no-history")
    assert streamed.stdout == raw.stdout.replace("<|im_start|>", "")
    with Store(db_path()) as store:
        (row,) = store.history()
    assert row.text == expected and "<|im_start|>" in row.raw_text
    for name in ("all.md", "all.jsonl"):
        assert run_cli("export", tmp_path / name).returncode == 0
        assert "<|" not in (tmp_path / name).read_text()
