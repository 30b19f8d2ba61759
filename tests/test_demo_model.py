"""The shipped demo model and adapter: our engine agrees with mlx_lm on them, the adapter does what
it was trained for, and the model writes real words at the app's default settings. Runs on the CPU in
a few seconds. (tools/train_demo/targets.py measures the full targets of MODEL_CARD.md.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from parity import mlx_lm_greedy, mlx_lm_model, ours_greedy_text

from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_ADAPTER_VALIDATION, DEMO_MODEL_DIR, DEMO_VOCABULARY
from inference import DraftDone, Engine, GenerationRequest, SamplingParams, inspect_adapter, inspect_model

REQUEST = "Write a post."


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(DEMO_MODEL_DIR, DEMO_ADAPTER_DIR)


@pytest.fixture
def adapter_on(engine, request):
    engine.adapter_enabled = request.param
    yield request.param
    engine.adapter_enabled = True


def test_shipped_files_are_a_4bit_qwen3_and_its_lora_within_10_mb():
    model = inspect_model(DEMO_MODEL_DIR)
    config = model.config
    assert config.model_type == "qwen3" and config.tie_word_embeddings
    assert (config.quant_for("model.embed_tokens").bits, config.quant_for("model.embed_tokens").group_size) == (4, 64)
    assert model.problems == []
    adapter_facts = inspect_adapter(DEMO_ADAPTER_DIR, DEMO_MODEL_DIR)
    assert adapter_facts.problems == []
    adapter = adapter_facts.config
    assert (adapter.fine_tune_type, adapter.rank, adapter.scale) == ("lora", 8, 20.0)
    shipped = [f for d in (DEMO_MODEL_DIR, DEMO_ADAPTER_DIR) for f in d.iterdir()]
    assert sum(f.stat().st_size for f in shipped) <= 10 * 2**20


@pytest.mark.parametrize("adapter_on", [False, True], ids=["base", "lora"], indirect=True)
def test_greedy_tokens_match_mlx_lm(engine, adapter_on):
    model, tokenizer = mlx_lm_model(DEMO_MODEL_DIR, DEMO_ADAPTER_DIR if adapter_on else None)
    prompt = engine.render_prompt(REQUEST)
    ids = engine.tokenizer.encode(prompt)
    assert ids == tokenizer.encode(prompt, add_special_tokens=False)
    reference = mlx_lm_greedy(model, tokenizer, ids, 48)
    assert len(reference) >= 5  # a trained model answers, it does not stop at once
    assert ours_greedy_text(engine, prompt, 48) == tokenizer.decode(reference)


def answer_perplexity(engine: Engine, texts: list[str]) -> float:
    """Perplexity of the texts as answers to REQUEST: the prompt's own tokens are not scored."""
    prompt = engine.tokenizer.encode(engine.render_prompt(REQUEST))
    logprobs = []
    for text in texts:
        answer = engine.tokenizer.encode(text + "<|im_end|>")
        logprobs += engine.token_logprobs(prompt + answer)[len(prompt) - 1:]
    return math.exp(-sum(logprobs) / len(logprobs))


def test_adapter_lowers_perplexity_on_its_held_out_category(engine):
    # Every third held-out text: a third of the CPU time, and still ~30 texts (~1,000 tokens) scored.
    texts = [json.loads(line) for line in DEMO_ADAPTER_VALIDATION.read_text().splitlines()][::3]
    engine.adapter_enabled = False
    without = answer_perplexity(engine, texts)
    engine.adapter_enabled = True
    with_adapter = answer_perplexity(engine, texts)
    assert with_adapter < 0.6 * without, (with_adapter, without)


def words_of(text: str) -> list[str]:
    """Lowercased words with the punctuation around them stripped, as vocabulary.txt was built."""
    words = (w.strip("\"'`.,;:!?()[]{}<>*_-/\\|").lower() for w in text.split())
    return [w for w in words if w]


def test_sampled_posts_are_mostly_real_words(engine):
    """The base model writes the corpus's words, even with no top-p cut-off to hide its tail."""
    vocabulary = set(DEMO_VOCABULARY.read_text().split())
    engine.adapter_enabled = False
    # temperature 0.8 alone: no top-p or top-k cut-off to hide the model's tail
    drafts = [SamplingParams(temperature=0.8, seed=seed) for seed in range(20)]
    events = list(engine.generate(GenerationRequest(engine.render_prompt(REQUEST), drafts, max_tokens=60)))
    engine.adapter_enabled = True
    words = [w for e in events if isinstance(e, DraftDone) for w in words_of(e.text)]
    assert len(words) >= 100
    known = sum(w in vocabulary for w in words)
    assert known >= 0.8 * len(words), [w for w in words if w not in vocabulary]


DICTIONARY = Path("/usr/share/dict/american-english")  # Debian's wamerican: English not built from the corpus


@pytest.mark.skipif(not DICTIONARY.exists(), reason="needs Debian's wamerican (apt-get install wamerican)")
def test_default_drafts_are_english_and_rarely_retried(engine):
    """At the app's defaults, as `bobby-tui post` drafts them: English words (a dictionary not built from the
    corpus), and most first attempts already long enough that no retry is needed."""
    from bobby_tui.composer import Draft, compose
    from bobby_tui.config import Config

    dictionary = {line.strip().lower() for line in DICTIONARY.read_text(errors="replace").splitlines()}
    config, s = Config(), Config().sampling
    engine.adapter_enabled = False
    drafts = [SamplingParams(temperature=s.temperature, top_p=s.top_p, seed=seed) for seed in range(10)]
    events = compose(engine, "Write a post about the weekend", None, drafts, s.max_tokens, config.postprocess,
                     config.post_limit)
    done = [e for e in events if isinstance(e, Draft)]
    engine.adapter_enabled = True
    words = [w for d in done for w in words_of(d.text) if any(c.isalpha() for c in w)]
    english = sum(w in dictionary for w in words)
    assert english >= 0.9 * len(words), [w for w in words if w not in dictionary]
    assert sum(d.attempts > 1 for d in done) <= 4, [d.text for d in done]
    assert all(len(d.text) >= config.postprocess.min_length for d in done), [d.text for d in done]


def test_training_continues_from_the_shipped_weights():
    """base --init-from: the torch training model, loaded from the shipped 4-bit checkpoint's dequantized weights,
    computes the logits mlx_lm computes from that checkpoint (so a continuation starts from the shipped model)."""
    torch = pytest.importorskip("torch", reason="the training pipeline's dependency (the demo-training extra)")
    import mlx.core as mx

    from tools.train_demo.export import load_quantized_checkpoint
    from tools.train_demo.qwen3 import Qwen3ForCausalLM

    shape, state = load_quantized_checkpoint(DEMO_MODEL_DIR)
    model = Qwen3ForCausalLM(shape)
    model.load_state_dict(state)
    reference, tokenizer = mlx_lm_model(DEMO_MODEL_DIR)
    ids = tokenizer.encode(Engine.load(DEMO_MODEL_DIR).render_prompt(REQUEST), add_special_tokens=False)
    with torch.no_grad():
        ours = model.eval()(torch.tensor([ids]))[0].numpy()
    theirs = reference(mx.array([ids]))[0].astype(mx.float32)
    theirs = np.array(theirs)
    assert ours.shape == theirs.shape
    assert abs(ours - theirs).max() < 1e-3  # float32 both sides (logits up to ~10)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_the_echo_recipe_reads_no_measured_noun_twice_and_its_leads_repeat_the_request():
    """The echo recipes (BASE_RUNS echo*, unsigned*): with echo_eval_nouns False no text holding an EVAL_NOUN (any
    case, or its plural) is echoed, an echo is the text twice, and a topic answer opens with a lead holding the
    request's " about {word}" ids."""
    pytest.importorskip("torch", reason="the training pipeline's dependency (the demo-training extra)")
    import random

    from tokenizers import Tokenizer

    from tools.train_demo.chat import LEADS, CopyRecipe, conversation_for, echo
    from tools.train_demo.corpus import Fortune
    from tools.train_demo.train_base import ECHO_MAX_CHARS, echo_texts

    measured = [Fortune("c", "Coffee is a drink."), Fortune("c", "Two rivers met."),
                Fortune("c", "My HOUSE, my rules.")]
    other = [Fortune("c", "My housemate drinks tea."), Fortune("c", "A horsefly bit me.")]
    too_long = [Fortune("c", "word " * (ECHO_MAX_CHARS // 5 + 1))]
    clean = CopyRecipe(echo_share=1.0, echo_eval_nouns=False)
    assert echo_texts(measured + other + too_long, clean) == other
    assert echo_texts(measured + other, CopyRecipe(echo_share=1.0)) == measured + other
    assert echo("A text.") == "A text.\n\nA text."

    tokenizer = Tokenizer.from_file(str(DEMO_MODEL_DIR / "tokenizer.json"))
    recipe = CopyRecipe(lead_share=1.0, leads="about")
    fortune = Fortune("c", "The lamp is on the table, and the cat is under it.", ("lamp", "table"))
    rng = random.Random(0)
    openings = set()
    for _ in range(200):
        request, answer = conversation_for(fortune, rng, recipe)
        if "about" not in request:
            continue  # a plain request: no lead
        word = request.rstrip(".").rsplit(" ", 1)[1]
        lead = next(lead.format(word=word) for lead in LEADS["about"] if answer.startswith(lead.format(word=word)))
        openings.add(lead.split(" about")[0])
        about_word = tokenizer.encode(f" about {word}").ids
        for text in (request, lead):
            ids = tokenizer.encode(text).ids
            assert any(ids[i:i + len(about_word)] == about_word for i in range(len(ids))), (text, word)
    assert len(openings) == len(LEADS["about"])


def test_unsigned_answers_end_before_their_attribution_and_short_bodies_stay_plain_text():
    """The shipped recipe (BASE_RUNS unsigned): an answer without its "-- Author" line keeps the topics its body
    names; a fortune whose body alone is under min_length is read as plain text, attribution and all."""
    from tools.train_demo.corpus import MIN_CHARS, Fortune, unattributed_answers

    body = "The lamp is on the table, and the cat is under it, as it has been every evening since the war."
    signed = Fortune("c", body + "\n-- Lampwick, on tables", ("lamp", "table", "lampwick", "tables"))
    short = Fortune("c", "A cat is fine.\n-- " + "Somebody Longwinded " * 4, ("cat",))
    unsigned = Fortune("c", body, ("lamp",))
    assert len(body) >= MIN_CHARS > len("A cat is fine.")
    answers, texts = unattributed_answers([signed, short, unsigned])
    assert answers == [Fortune("c", body, ("lamp", "table")), unsigned]
    assert texts == [short]
