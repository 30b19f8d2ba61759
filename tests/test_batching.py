"""Continuous batching: requests with different prompts share one running batch, joining and leaving between steps,
and each draft gives the text it gives alone through Engine.generate."""

from dataclasses import replace

import pytest

from inference import (
    BatchGenerator,
    DraftDone,
    Engine,
    EngineOptions,
    GenerationRequest,
    ParameterError,
    SamplingParams,
)

PROMPTS = ["Write a post about the small boats.", "A journey of a thousand miles begins with a single step."]
CHUNK = 8  # prefill tokens per step: the prompts take several steps, so joining mid-run is exercised


@pytest.fixture(scope="module")
def engine(tiny_models):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    return Engine.load(model_dir, adapter_dir, options=replace(EngineOptions.for_device(), prefill_chunk=CHUNK))


def request(engine, prompt, drafts, max_tokens=24):
    return GenerationRequest(engine.render_prompt(prompt), drafts, max_tokens=max_tokens)


def alone(engine, prompt, drafts, max_tokens=24) -> list[str]:
    events = engine.generate(request(engine, prompt, drafts, max_tokens))
    return [e.text for e in sorted((e for e in events if isinstance(e, DraftDone)), key=lambda e: e.draft)]


def drain(generator: BatchGenerator, done: dict, streamed: dict, limit: int = 500) -> None:
    """Step until no work is left; DraftDone by (request, draft) in ``done``, deltas joined in ``streamed``."""
    for _ in range(limit):
        if not generator.has_work:
            return
        collect(generator.step(), done, streamed)
    raise AssertionError("the generator did not finish")


def collect(events, done, streamed):
    for request_id, event in events:
        key = (request_id, event.draft)
        assert key not in done, "no event after a draft is done"
        if isinstance(event, DraftDone):
            done[key] = event
        else:
            streamed[key] = streamed.get(key, "") + event.text


def test_two_prompts_in_one_batch_each_give_their_text_alone(engine):
    greedy = [SamplingParams(temperature=0.0)]
    expected = [alone(engine, prompt, greedy)[0] for prompt in PROMPTS]
    generator = BatchGenerator(engine)
    ids = [generator.submit(request(engine, prompt, greedy)) for prompt in PROMPTS]
    done, streamed = {}, {}
    drain(generator, done, streamed)
    assert [done[(i, 0)].text for i in ids] == expected
    assert [streamed.get((i, 0), "") for i in ids] == expected
    assert len(set(expected)) == 2


def test_a_request_joins_a_running_batch_within_two_steps_of_its_prefill(engine):
    generator = BatchGenerator(engine)
    first = generator.submit(request(engine, PROMPTS[0], [SamplingParams(temperature=0.0)], max_tokens=60))
    done, streamed = {}, {}
    while generator.active_rows == 0:
        collect(generator.step(), done, streamed)
    for _ in range(3):
        collect(generator.step(), done, streamed)
    second_prompt = engine.render_prompt(PROMPTS[1])
    prefill_steps = -(-len(engine.tokenizer.encode(second_prompt)) // CHUNK)
    second = generator.submit(GenerationRequest(second_prompt, [SamplingParams(temperature=0.0)] * 2, max_tokens=20))
    steps = 0
    while generator.active_rows < 3:
        collect(generator.step(), done, streamed)
        steps += 1
        assert generator.active_rows >= 1, "the running row keeps decoding while the new prompt is prefilled"
    assert steps <= prefill_steps + 2
    drain(generator, done, streamed)
    assert done[(second, 0)].text == done[(second, 1)].text == alone(engine, PROMPTS[1], [SamplingParams()], 20)[0]
    assert done[(first, 0)].text == alone(engine, PROMPTS[0], [SamplingParams()], 60)[0]


@pytest.fixture(scope="module")
def whole_prompt_engine(tiny_models):
    """The default chunk: each test prompt prefills in one pass."""
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    return Engine.load(model_dir, adapter_dir)


def test_requests_waiting_together_prefill_in_one_pass_and_each_gives_its_text_alone(whole_prompt_engine):
    engine, greedy = whole_prompt_engine, SamplingParams(temperature=0.0)
    prompts = [*PROMPTS, "Rain on the roof."]  # three lengths: two rows left-padded in the shared pass
    expected = [alone(engine, prompt, [greedy])[0] for prompt in prompts]
    engine.prompt_cache.entries.clear()  # nothing to reuse: they prefill together
    generator = BatchGenerator(engine)
    ids = [generator.submit(request(engine, prompt, [greedy] * (2 if i == 1 else 1)))
           for i, prompt in enumerate(prompts)]
    done, streamed = {}, {}
    collect(generator.step(), done, streamed)
    assert generator.active_rows == 4, "one step prefills all three prompts (four rows)"
    drain(generator, done, streamed)
    assert [done[(i, 0)].text for i in ids] == expected and done[(ids[1], 1)].text == expected[1]
    assert all(done[(i, 0)].stats.prefilled_tokens == done[(i, 0)].stats.prompt_tokens for i in ids)


def test_requests_sharing_only_the_template_opening_with_a_cached_prompt_still_prefill_together(
        whole_prompt_engine):
    """Clients arriving at once after an earlier request: each prompt shares the chat template's first tokens with
    the cached one, which is not worth a pass of its own per request (they would join one per step)."""
    engine, greedy = whole_prompt_engine, SamplingParams(temperature=0.0)
    prompts = ["Rain on the roof.", "Owls at night, again and again.", "Trains."]
    expected = [alone(engine, prompt, [greedy])[0] for prompt in prompts]
    engine.prompt_cache.entries.clear()
    alone(engine, PROMPTS[0], [greedy])  # the cache now holds a prompt with the same template opening
    shared = engine.prompt_cache.reusable(engine.tokenizer.encode(engine.render_prompt(prompts[0])),
                                               engine.current_adapter)
    assert shared > 0, "the test needs a shared opening"
    generator = BatchGenerator(engine)
    ids = [generator.submit(request(engine, prompt, [greedy])) for prompt in prompts]
    done, streamed = {}, {}
    collect(generator.step(), done, streamed)
    assert generator.active_rows == 3, "one step prefills all three prompts"
    drain(generator, done, streamed)
    assert [done[(i, 0)].text for i in ids] == expected


def test_a_request_with_a_cached_prefix_prefills_alone_and_only_the_rest(whole_prompt_engine):
    engine, greedy = whole_prompt_engine, SamplingParams(temperature=0.0)
    engine.prompt_cache.entries.clear()
    alone(engine, PROMPTS[0], [greedy])  # its prompt is now in the prompt cache
    longer = engine.render_prompt(PROMPTS[0]) + "Again"
    generator = BatchGenerator(engine)
    fresh = generator.submit(request(engine, PROMPTS[1], [greedy]))
    reusing = generator.submit(GenerationRequest(longer, [greedy], max_tokens=24))
    done, streamed = {}, {}
    collect(generator.step(), done, streamed)
    assert generator.active_rows == 1, "the head prefills alone: the next one reuses a cached prefix"
    drain(generator, done, streamed)
    stats = done[(reusing, 0)].stats
    assert stats.prefilled_tokens < stats.prompt_tokens
    assert done[(fresh, 0)].text == alone(engine, PROMPTS[1], [greedy])[0]


def test_cancel_frees_the_rows_before_the_next_step(engine):
    generator = BatchGenerator(engine)
    keep = generator.submit(request(engine, PROMPTS[0], [SamplingParams(temperature=0.0)], max_tokens=40))
    gone = generator.submit(request(engine, PROMPTS[1], [SamplingParams(temperature=0.0)] * 2, max_tokens=40))
    done, streamed = {}, {}
    while generator.active_rows < 3:
        collect(generator.step(), done, streamed)
    collect(generator.step(), done, streamed)
    generator.cancel(gone)
    events = generator.step()
    collect(events, done, streamed)
    assert generator.active_rows == 1
    cancelled = [e for rid, e in events if rid == gone and isinstance(e, DraftDone)]
    assert sorted(e.draft for e in cancelled) == [0, 1] and {e.finish_reason for e in cancelled} == {"cancelled"}
    assert all(e.text == streamed.get((gone, e.draft), "") for e in cancelled)
    drain(generator, done, streamed)
    assert done[(keep, 0)].text == alone(engine, PROMPTS[0], [SamplingParams()], 40)[0]


def test_seeded_sampled_rows_reproduce_alone_and_batched(engine):
    drafts = [SamplingParams(temperature=0.9, top_p=0.95, seed=11), SamplingParams(temperature=1.2, top_k=20, seed=12)]
    other = [SamplingParams(temperature=1.0, repetition_penalty=1.2, seed=13)]
    expected = alone(engine, PROMPTS[0], drafts), alone(engine, PROMPTS[1], other)
    generator = BatchGenerator(engine)
    first = generator.submit(request(engine, PROMPTS[0], drafts))
    generator.step()
    second = generator.submit(request(engine, PROMPTS[1], other))
    done, streamed = {}, {}
    drain(generator, done, streamed)
    assert [done[(first, i)].text for i in range(2)] == expected[0]
    assert done[(second, 0)].text == expected[1][0]
    assert len(set(expected[0])) == 2


def test_rows_beyond_max_rows_wait_their_turn(engine):
    generator = BatchGenerator(engine, max_rows=2)
    first = generator.submit(request(engine, PROMPTS[0], [SamplingParams()] * 2, max_tokens=6))
    second = generator.submit(request(engine, PROMPTS[1], [SamplingParams()], max_tokens=6))
    done, streamed, most = {}, {}, 0
    while generator.has_work:
        collect(generator.step(), done, streamed)
        most = max(most, generator.active_rows)
    assert most == 2 and {(first, 0), (first, 1), (second, 0)} == set(done)
    with pytest.raises(ParameterError, match="3 drafts do not fit a batch of 2 rows"):
        generator.submit(request(engine, PROMPTS[0], [SamplingParams()] * 3))


def test_bad_requests_are_refused_at_submit(engine):
    generator = BatchGenerator(engine)
    with pytest.raises(ValueError, match="empty"):
        generator.submit(GenerationRequest("", [SamplingParams()]))
    with pytest.raises(ParameterError, match="at least one draft"):
        generator.submit(GenerationRequest("hi", []))
    with pytest.raises(ParameterError, match="max_tokens"):
        generator.submit(GenerationRequest("hi", [SamplingParams()], max_tokens=-1))
    assert not generator.has_work


def test_chunked_prefill_gives_the_text_of_one_pass(engine, tiny_models):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    one_pass = Engine.load(model_dir, adapter_dir)
    greedy = [SamplingParams(temperature=0.0)]
    assert alone(engine, PROMPTS[1], greedy) == alone(one_pass, PROMPTS[1], greedy)


def test_cancel_stops_a_long_prompt_between_prefill_chunks(engine):
    """Engine.generate asks should_cancel after every step, a prefill chunk included: a long prompt stops after
    its first chunk, its draft ending "cancelled" with no token."""
    prompt = engine.render_prompt(" ".join([PROMPTS[1]] * 8))
    assert len(engine.tokenizer.encode(prompt)) > 10 * CHUNK
    calls = []
    events = list(engine.generate(GenerationRequest(prompt, [SamplingParams()], max_tokens=8),
                                  lambda: calls.append(1) or True))
    assert len(calls) == 1
    done = [(e.finish_reason, e.stats.generated_tokens) for e in events if isinstance(e, DraftDone)]
    assert done == [("cancelled", 0)]
