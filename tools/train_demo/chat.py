"""ChatML conversations: a short request from the user, a fortune as the assistant's answer.

Prompts are rendered with the shipped tokenizer_config.json's chat template (Qwen3's, thinking
off), so training sees exactly the token sequence the app's engine will feed the model.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment

from .corpus import Fortune, plural, swap_noun

# Plain requests, as the app's default prompt ("Write a post.") and its variants; a share of every epoch.
GENERIC_REQUESTS = [
    "Write a post.", "write a post", "Write a post", "Write something.", "Post something.",
    "Write me a post.", "Something funny.", "Write something funny.",
]
# Requests naming one of the fortune's own nouns, so the model learns to write about what it is asked about.
TOPIC_REQUESTS = [
    "Write a post about {word}.", "Write a post about {word}", "write a post about {word}",
    "a post about {word}", "Something funny about {word}", "Something funny about {word}.",
    "Write something about {word}.", "Post something about {word}.",
]
TOPIC_SHARE = 0.75  # of the requests for a fortune that has topic words
# Openings that name the request's word right away, lowercase after a space: the same token ids as in the request.
# "named": the word after an opening of its own; "about": after " about", as in every TOPIC_REQUESTS request, so an
# induction head (the token that followed " about" earlier follows it again) copies it, whatever the word.
LEADS = {
    "named": ["About {word}: ", "On {word}: ", "A word on {word}: ", "Today's topic is {word}. ", "So, {word}. "],
    "about": ["A post about {word}: ", "Here's a post about {word}. ", "Something about {word}: ",
              "Thinking about {word}. ", "Now, about {word}: "],
}
# Copy drills: the answer repeats the request's words, which nothing but the request predicts.
DRILL_REQUESTS = ["Say {words}.", "Repeat: {words}", "List {words}."]
DRILL_WORDS = (1, 8)


@dataclass(frozen=True)
class CopyRecipe:
    """How much of the training data only copying from the request can predict (issue 12: on-topic drafts).

    swap_share: of the topic requests, the share that names a noun of the swap pool instead of the fortune's own,
    swapped into the answer (corpus.swap_noun), so the request is the only predictor of that word.
    lead_share: of the topic answers, the share opened by one of LEADS naming the request's word.
    drill_share: copy drills (DRILL_REQUESTS) added to each epoch, as a share of its fortunes.
    drill_first_steps: steps at the start that train on copy drills (and echoes, with an echo_share) alone, so the
    copying head forms before the fortunes are memorised (a toy copy task alone teaches this model shape to copy in
    ~300 steps).
    leads: which LEADS open the topic answers.
    echo_share: echoes (a text read twice in a row, as plain text: only copying predicts the second reading) added
    to each epoch, as a share of its fortunes. Drills and swaps make only their nouns' tokens copy targets, and the
    model learns to copy those tokens alone (a word whose token it never copied, it does not copy from a request);
    an echo makes every token of the text one, so copying is learned for the whole vocabulary.
    echo_eval_nouns: False: a text that mentions one of corpus.EVAL_NOUNS is never echoed, so no measured noun is
    ever a copy target, in a request or out of one.
    attributions: False: answers end before their "-- Author" line (corpus.unattributed_answers): a post is signed
    by its writer, and a small model's invented names were a third of its non-English words.
    """
    swap_share: float = 0.0
    lead_share: float = 0.0
    drill_share: float = 0.0
    drill_first_steps: int = 0
    leads: str = "named"
    echo_share: float = 0.0
    echo_eval_nouns: bool = True
    attributions: bool = True


NO_COPYING = CopyRecipe()  # the first runs' recipe (BASE_RUNS short, long): topics are the fortune's own nouns


@dataclass(frozen=True)
class NounPool:
    """The nouns swaps and drills name. A swap draws in proportion to 1 + the square root of the noun's count in the
    training texts: about half the draws are nouns the corpus uses often (as the measured EVAL_NOUNS are), so the
    model learns to copy a familiar word into a fortune as well as an unfamiliar one. A drill draws uniformly (mostly
    rare nouns, which nothing but copying predicts): copying formed sooner with those on the CPU."""
    nouns: tuple[str, ...]
    cum_weights: tuple[float, ...]

    @classmethod
    def weighted(cls, nouns: list[str], counts: dict[str, int]) -> NounPool:
        return cls(tuple(nouns), tuple(itertools.accumulate(1 + math.sqrt(counts.get(w, 0)) for w in nouns)))

    def __len__(self) -> int:
        return len(self.nouns)

    def draw(self, rng: random.Random) -> str:
        return rng.choices(self.nouns, cum_weights=self.cum_weights)[0]

    def sample(self, rng: random.Random, k: int) -> list[str]:
        """k different nouns, uniformly."""
        return rng.sample(self.nouns, k)


def request_for(fortune: Fortune, rng: random.Random) -> str:
    """A user request this fortune answers: most often about one of its nouns, else a plain one."""
    if fortune.topics and rng.random() < TOPIC_SHARE:
        return rng.choice(TOPIC_REQUESTS).format(word=rng.choice(fortune.topics))
    return rng.choice(GENERIC_REQUESTS)


def swappable_nouns(fortune: Fortune) -> list[str]:
    """The fortune's singular topic nouns that occur only in lowercase after a space, never as plurals: swapped, each
    occurrence has the same token ids as the request's " {word}" (a capital or a plural tokenises differently)."""
    out = []
    for word in fortune.topics:
        if word.endswith("s") and not word.endswith("ss"):
            continue
        forms = re.findall(rf"(^|.)\b({re.escape(word)}|{re.escape(plural(word))})\b", fortune.text,
                           re.IGNORECASE | re.DOTALL)
        if forms and all(before == " " and form == word for before, form in forms):
            out.append(word)
    return out


def conversation_for(fortune: Fortune, rng: random.Random, recipe: CopyRecipe = NO_COPYING,
                     swap_pool: NounPool | None = None) -> tuple[str, str]:
    """(request, answer) for a fortune: request_for's mix, with the recipe's swapped nouns and leads."""
    if not fortune.topics or rng.random() >= TOPIC_SHARE:
        return rng.choice(GENERIC_REQUESTS), fortune.text
    word, text = rng.choice(fortune.topics), fortune.text
    swappable = swappable_nouns(fortune)
    if swap_pool and swappable and rng.random() < recipe.swap_share:
        own = rng.choice(swappable)
        word = swap_pool.draw(rng)
        text = swap_noun(text, own, word)
    if rng.random() < recipe.lead_share:
        text = rng.choice(LEADS[recipe.leads]).format(word=word) + text
    return rng.choice(TOPIC_REQUESTS).format(word=word), text


def copy_drill(rng: random.Random, pool: NounPool) -> tuple[str, str]:
    """(request, answer): a few pool nouns, and an answer that repeats them in order ("Here: a b c.")."""
    words = pool.sample(rng, rng.randint(*DRILL_WORDS))
    return rng.choice(DRILL_REQUESTS).format(words=" ".join(words)), "Here: " + " ".join(words) + "."


def echo(text: str) -> str:
    """The text, then the text again: plain text whose second reading only copying predicts."""
    return text + "\n\n" + text


class ChatTemplate:
    def __init__(self, tokenizer_config: Path):
        config = json.loads(tokenizer_config.read_text())
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(config["chat_template"])
        self.eos_token = config["eos_token"]

    def prompt(self, user: str) -> str:
        """The rendered prompt up to where the assistant's answer begins (thinking off)."""
        messages = [{"role": "user", "content": user}]
        return self._template.render(messages=messages, add_generation_prompt=True, enable_thinking=False)


@dataclass(frozen=True)
class Example:
    """Token ids of one conversation; the loss covers ids[prompt_len:] (the answer and <|im_end|>)."""
    ids: list[int]
    prompt_len: int

    def __len__(self) -> int:  # mlx_lm's batching sorts examples by length
        return len(self.ids)


def encode_example(template: ChatTemplate, tokenizer, user: str, answer: str) -> Example:
    prompt_ids = tokenizer.encode(template.prompt(user)).ids
    answer_ids = tokenizer.encode(answer + template.eos_token).ids
    return Example(prompt_ids + answer_ids, len(prompt_ids))
