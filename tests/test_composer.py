import dataclasses
from types import SimpleNamespace

import pytest

from bobby_tui.composer import Draft, DraftRetry, compose, retry_seed, to_record
from bobby_tui.config import PostProcess
from inference import DraftDone, GenerationStats, SamplingParams, TokenDelta


class FakeEngine:
    """Scripted engine: `texts[seed]` is what a draft with that seed decodes to (in two deltas)."""

    model_name = "fake-model"
    adapter_name = "fake-adapter"
    adapter_enabled = True

    def __init__(self, texts, special_tokens=frozenset()):
        self.texts = texts
        self.tokenizer = SimpleNamespace(special_tokens=frozenset(special_tokens))
        self.requests = []
        self.rendered = []

    def render_messages(self, messages, prefill=None):
        self.rendered.append((messages, prefill))
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + (prefill or "")

    def generate(self, request, should_cancel=None):
        self.requests.append(request)
        texts = [self.texts[p.seed] for p in request.drafts]
        for k, text in enumerate(texts):
            yield TokenDelta(draft=k, text=text[: len(text) // 2])
        for k, text in enumerate(texts):
            yield TokenDelta(draft=k, text=text[len(text) // 2 :])
        for k, (params, text) in enumerate(zip(request.drafts, texts, strict=True)):
            stats = GenerationStats(prompt_tokens=7, generated_tokens=len(text), prefill_tok_s=100.0,
                                    decode_tok_s=20.0, peak_memory_bytes=0)
            yield DraftDone(draft=k, text=text, finish_reason="stop", params=params, stats=stats)


LONG = "A post that is comfortably longer than the minimum length, so nobody asks for it again. Really."
OPTS = PostProcess(min_length=40, retries=2)


def run(engine, seeds, temperature=0.9, opts=OPTS, raw=False, system=None):
    drafts = [SamplingParams(temperature=temperature, seed=s) for s in seeds]
    return list(compose(engine, "Write.", system, drafts, 64, opts, 300, raw=raw))


def finals(events):
    return {e.draft: e for e in events if isinstance(e, Draft)}


def test_drafts_are_postprocessed_and_deltas_stream():
    engine = FakeEngine({1: "<think>hm</think>  " + LONG + "  ", 2: LONG})
    events = run(engine, [1, 2], system="Be brief.")
    assert engine.rendered == [([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write."}],
                                None)]
    assert len(engine.requests) == 1 and engine.requests[0].max_tokens == 64
    done = finals(events)
    assert done[0].text == LONG and done[0].raw_text == engine.texts[1] and done[0].attempts == 1
    streamed = "".join(e.text for e in events if isinstance(e, TokenDelta) and e.draft == 0)
    assert streamed == engine.texts[1]


def test_the_system_prompt_reaches_the_template_as_given():
    # None renders no system message, "" an empty one (mlx_lm's rendering of those messages)
    for system in (None, "", "  Be brief.\n"):
        engine = FakeEngine({1: LONG})
        run(engine, [1], system=system)
        system_message = [] if system is None else [{"role": "system", "content": system}]
        assert engine.rendered == [([*system_message, {"role": "user", "content": "Write."}], None)]


def test_special_tokens_never_reach_deltas_or_drafts_unless_raw():
    from fixtures import QWEN_TOKENIZER_DIR

    from inference.tokenizer import Tokenizer

    specials = Tokenizer(QWEN_TOKENIZER_DIR).special_tokens  # the real Qwen3 tokenizer's
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_pad|>"} <= specials
    assert not {"<think>", "</think>", "<|fim_prefix|>", "<tool_call>"} & specials  # added, but not special
    leaky = "<|im_start|>assistant\n" + LONG + "<|endoftext|> <|fim_prefix|><|vision_pad|>"
    events = run(FakeEngine({1: leaky}, special_tokens=specials), [1])
    done = finals(events)[0]
    assert done.text == "assistant\n" + LONG + " <|fim_prefix|>" and done.raw_text == leaky
    streamed = "".join(e.text for e in events if isinstance(e, TokenDelta))
    assert streamed == "assistant\n" + LONG + " <|fim_prefix|>"
    raw = finals(run(FakeEngine({1: leaky}, special_tokens=specials), [1], raw=True))[0]
    assert raw.text == raw.raw_text == leaky


@pytest.mark.parametrize("deltas", [
    ["Tea <|im_", "end|> time <", "3 and <|endo", "ftext|>"],  # spelled out across deltas
    ["Tea ", "<|im_end|>", " time <3 and ", "<|endoftext|>"],  # one token each
    ["Tea <|im_end|> time <3 and <|"],  # a stream that ends on a beginning
])
def test_streamed_deltas_add_up_to_the_filtered_text(deltas):
    from bobby_tui.composer import SpecialTokenFilter

    specials = SpecialTokenFilter(frozenset({"<|im_end|>", "<|endoftext|>"}))
    streamed = "".join(specials.delta(3, d) for d in deltas) + specials.end(3)
    assert streamed == specials("".join(deltas))
    assert "<|im_end|>" not in streamed and "<|endoftext|>" not in streamed and "<3" in streamed


def test_a_retried_draft_keeps_its_seed_and_reports_the_attempt_seed():
    engine = FakeEngine({7: "short", retry_seed(7, 2): LONG})
    events = run(engine, [7])
    done = finals(events)[0]
    assert (done.seed, done.attempt_seed, done.attempts) == (7, retry_seed(7, 2), 2)
    rec = to_record(done, engine, "Write.", None)
    assert (rec.seed, rec.attempt_seed, rec.attempts) == (7, retry_seed(7, 2), 2)


def test_a_short_draft_is_regenerated_with_a_new_seed_until_long_enough():
    engine = FakeEngine({1: LONG, 2: "short", retry_seed(2, 2): "still short", retry_seed(2, 3): LONG + "!"})
    events = run(engine, [1, 2])
    assert [type(e) for e in events if not isinstance(e, TokenDelta)] == [Draft, DraftRetry, DraftRetry, Draft]
    retries = [e for e in events if isinstance(e, DraftRetry)]
    assert retries == [DraftRetry(draft=1, attempt=2), DraftRetry(draft=1, attempt=3)]
    # each retry round asks only for the short draft, with a fresh seed, and its deltas keep draft index 1
    assert [[p.seed for p in r.drafts] for r in engine.requests] == [[1, 2], [retry_seed(2, 2)], [retry_seed(2, 3)]]
    assert {e.draft for e in events[events.index(retries[0]):] if isinstance(e, TokenDelta)} == {1}
    done = finals(events)
    assert done[1].text == LONG + "!" and done[1].attempts == 3 and done[1].attempt_seed == retry_seed(2, 3)
    assert done[1].seed == 2
    assert done[1].params.temperature == 0.9


def test_retries_stop_at_the_configured_count():
    engine = FakeEngine({2: "short", retry_seed(2, 2): "tiny"})
    done = finals(run(engine, [2], opts=dataclasses.replace(OPTS, retries=1)))
    assert done[0].text == "tiny" and done[0].attempts == 2
    assert len(engine.requests) == 2


def test_greedy_and_raw_drafts_are_never_retried():
    engine = FakeEngine({5: "<think>x</think> short "})
    assert finals(run(engine, [5], temperature=0.0))[0].text == "short"
    raw = finals(run(engine, [5], raw=True))[0]
    assert raw.text == raw.raw_text == "<think>x</think> short "
    assert len(engine.requests) == 2


def test_retry_seeds_differ_from_sibling_seeds():
    seeds = {retry_seed(s, a) for s in range(100, 108) for a in (2, 3, 4)}
    assert seeds.isdisjoint(range(100, 108)) and len(seeds) == 24


def test_to_record_carries_the_draft_and_engine_facts():
    engine = FakeEngine({3: LONG})
    draft = finals(run(engine, [3]))[0]
    rec = to_record(draft, engine, "Write.", None)
    assert (rec.prompt, rec.text, rec.raw_text, rec.seed, rec.temperature) == ("Write.", LONG, LONG, 3, 0.9)
    assert (rec.model, rec.adapter, rec.system_prompt) == ("fake-model", "fake-adapter", "")
    assert (rec.prompt_tokens, rec.generated_tokens, rec.finish_reason) == (7, len(LONG), "stop")
    engine.adapter_enabled = False
    assert to_record(draft, engine, "Write.", "sys").adapter is None


def test_a_batch_past_max_drafts_is_refused_before_anything_runs():
    from bobby_tui.composer import MAX_DRAFTS, DraftLimitError

    engine = FakeEngine({s: LONG for s in range(MAX_DRAFTS + 1)})
    assert len(finals(run(engine, range(MAX_DRAFTS)))) == MAX_DRAFTS
    with pytest.raises(DraftLimitError, match=f"at most {MAX_DRAFTS}"):  # a spread of 65 temperatures, say
        run(engine, range(MAX_DRAFTS + 1))
    assert len(engine.requests) == 1


def test_draft_limit_follows_the_kv_cache_and_the_memory():
    from bobby_tui.composer import MAX_DRAFTS, DraftLimitError, check_draft_count, draft_limit, kv_cache_bytes

    qwen3_8b = SimpleNamespace(num_hidden_layers=36, num_key_value_heads=8, head_dim=128)
    per_draft = kv_cache_bytes(qwen3_8b, 4096)
    assert per_draft == 2 * 36 * 8 * 128 * 4 * 4096  # 1.1 GiB in float32
    assert draft_limit(qwen3_8b, 4096, 16 * 2**30) == 8 * 2**30 // per_draft == 7  # half of 16 GiB
    assert draft_limit(qwen3_8b, 4096, 2**40) == MAX_DRAFTS and draft_limit(qwen3_8b, 4096, None) == MAX_DRAFTS
    check_draft_count(7, qwen3_8b, 4096, 16 * 2**30)
    with pytest.raises(DraftLimitError, match="8 drafts need 9.0 GB of KV cache .* at most 7 drafts") as err:
        check_draft_count(8, qwen3_8b, 4096, 16 * 2**30)
    assert err.value.limit == 7


def test_history_goes_between_the_system_message_and_the_new_prompt_and_the_record_keeps_it():
    engine = FakeEngine({1: LONG})
    history = [{"role": "user", "content": "Write."}, {"role": "assistant", "content": "A first draft."}]
    drafts = [SamplingParams(temperature=0.9, seed=1)]
    events = list(compose(engine, "Shorter.", "Be brief.", drafts, 64, OPTS, 300, history=history))
    expected = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "Shorter."}]
    assert engine.rendered == [(expected, None)]
    record = to_record(finals(events)[0], engine, "Shorter.", "Be brief.", history=history, persona="zippy",
                       parent_id=12)
    assert (record.prompt, record.messages, record.parent_id, record.persona, record.prefill) == (
        "Shorter.", expected, 12, "zippy", None)
    plain = to_record(finals(events)[0], engine, "Shorter.", None)
    assert (plain.messages, plain.parent_id, plain.persona) == (None, None, None)


def test_a_prefilled_reply_starts_with_the_prefill_in_its_deltas_text_and_retries():
    short_then_long = {1: " short", retry_seed(1, 2): " and then it goes on, " + LONG}
    engine = FakeEngine(short_then_long, special_tokens={"<|im_end|>"})
    drafts = [SamplingParams(temperature=0.9, seed=1)]
    events = list(compose(engine, "Write.", None, drafts, 64, OPTS, 300, prefill="Well,"))
    assert engine.rendered == [([{"role": "user", "content": "Write."}], "Well,")]
    done = finals(events)[0]
    assert done.attempts == 2  # "Well, short" was too short: the retry starts with the prefill again
    assert done.text == "Well, and then it goes on, " + LONG
    assert done.raw_text == "Well," + short_then_long[retry_seed(1, 2)]
    after_retry = events[next(i for i, e in enumerate(events) if isinstance(e, DraftRetry)) + 1:]
    streamed = "".join(e.text for e in after_retry if isinstance(e, TokenDelta))
    assert streamed == done.raw_text  # the deltas add up to the text, the prefill first
    record = to_record(done, engine, "Write.", None, prefill="Well,")
    assert (record.text, record.prefill, record.messages) == (done.text, "Well,", None)
    raw = list(compose(FakeEngine({1: " x"}), "Write.", None, drafts, 64, OPTS, 300, raw=True, prefill="Well,"))
    assert finals(raw)[0].text == "Well, x"


def test_adapters_are_one_per_draft():
    drafts = [SamplingParams(temperature=0.9, seed=s) for s in (1, 2)]
    with pytest.raises(ValueError, match="1 adapters for 2 drafts"):
        list(compose(FakeEngine({1: LONG, 2: LONG}), "Write.", None, drafts, 64, OPTS, 300, adapters=("a",)))
