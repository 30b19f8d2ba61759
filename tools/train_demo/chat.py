"""ChatML conversations: a short request from the user, a fortune as the assistant's answer.

Prompts are rendered with the shipped tokenizer_config.json's chat template (Qwen3's, thinking
off), so training sees exactly the token sequence the app's engine will feed the model.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment

from .corpus import DEV_NOUNS, Fortune, swap_noun

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
# With topic_lead, a topic answer opens by naming its word in the request's own spelling (the same token): a
# fixed place for the model to learn to look up what it was asked about, where a noun somewhere in the text is not.
TOPIC_LEAD = "About {word}: "


def conversation_for(fortune: Fortune, rng: random.Random, swap_share: float = 0.0,
                     swap_pool: tuple[str, ...] = (), topic_lead: bool = False) -> tuple[str, str]:
    """(request, answer): most often a request about one of the fortune's nouns, else a plain one. With
    ``swap_share``, that share of the topic requests names a noun of ``swap_pool`` instead, swapped into the answer
    for the fortune's own (corpus.swap_noun): the fortune's text cannot predict that word, only the request can, so
    the model learns to write about what it is asked about rather than to recall a memorised fortune."""
    if not fortune.topics or rng.random() >= TOPIC_SHARE:
        return rng.choice(GENERIC_REQUESTS), fortune.text
    word, text = rng.choice(fortune.topics), fortune.text
    if swap_pool and looks_singular(word) and rng.random() < swap_share:
        replacement = rng.choice(swap_pool)
        word, text = replacement, swap_noun(text, word, replacement)
    return rng.choice(TOPIC_REQUESTS).format(word=word), (TOPIC_LEAD.format(word=word) if topic_lead else "") + text


def looks_singular(noun: str) -> bool:
    """Not a regular plural: swap_noun maps a noun and its plural, so both sides of a swap are singular."""
    return not noun.endswith("s") or noun.endswith("ss")


def swap_pool_of(fortunes: list[Fortune]) -> tuple[str, ...]:
    """The nouns a swap may bring in: every singular topic word of the training fortunes."""
    return tuple(sorted({word for fortune in fortunes for word in fortune.topics if looks_singular(word)}))


def swapped_validation(fortunes: list[Fortune], topic_lead: bool = False) -> list[tuple[str, str]]:
    """Fixed (request, answer) pairs: each held-out fortune with a singular topic, its first one swapped for one of
    DEV_NOUNS in turn (never a training request word), the request naming it."""
    pairs = []
    swappable = ((f, [w for w in f.topics if looks_singular(w)]) for f in fortunes)
    for i, (fortune, nouns) in enumerate((f, nouns) for f, nouns in swappable if nouns):
        word = DEV_NOUNS[i % len(DEV_NOUNS)]
        request = TOPIC_REQUESTS[i % len(TOPIC_REQUESTS)].format(word=word)
        lead = TOPIC_LEAD.format(word=word) if topic_lead else ""
        pairs.append((request, lead + swap_noun(fortune.text, nouns[0], word)))
    return pairs


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
