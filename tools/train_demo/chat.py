"""ChatML conversations: a short request from the user, a fortune as the assistant's answer.

Prompts are rendered with the shipped tokenizer_config.json's chat template (Qwen3's, thinking
off), so training sees exactly the token sequence the app's engine will feed the model.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment

from .corpus import Fortune, plural

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
# Of the topic requests, this share names a random corpus noun instead and puts it in the text in place of
# the fortune's own noun: the answer's context cannot predict the word, only the request can, so the model
# learns to write about whatever word it is asked about, also words it was never asked about.
SWAP_SHARE = 0.5


def swap_noun(text: str, old: str, new: str) -> str:
    """`text` with the noun `old` (and its plural) replaced by `new` (and its plural), keeping the case."""
    def replace(match: re.Match) -> str:
        found = match.group(0)
        word = new if found.lower() == old else plural(new)
        if len(found) > 1 and found.isupper():
            return word.upper()
        return word[0].upper() + word[1:] if found[0].isupper() else word

    return re.sub(rf"\b({re.escape(old)}|{re.escape(plural(old))})\b", replace, text, flags=re.IGNORECASE)


def conversation_for(fortune: Fortune, rng: random.Random, swap_nouns: list[str] | None = None) -> tuple[str, str]:
    """(request, answer) for this fortune: most often a request about one of its nouns, else a plain one; with
    swap_nouns, some topic requests name another noun and the answer has it in place of the fortune's."""
    if fortune.topics and rng.random() < TOPIC_SHARE:
        word, text = rng.choice(fortune.topics), fortune.text
        if swap_nouns and rng.random() < SWAP_SHARE and not word.endswith("s"):
            new = rng.choice(swap_nouns)
            word, text = new, swap_noun(text, word, new)
        return rng.choice(TOPIC_REQUESTS).format(word=word), text
    return rng.choice(GENERIC_REQUESTS), fortune.text


def swap_nouns_of(fortunes: list[Fortune]) -> list[str]:
    """The singular topic nouns of these fortunes: what a swapped request may name (never an EVAL_NOUN)."""
    return sorted({t for f in fortunes for t in f.topics if not t.endswith("s")})


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


def encode_example(template: ChatTemplate, tokenizer, user: str, answer: str) -> Example:
    prompt_ids = tokenizer.encode(template.prompt(user)).ids
    answer_ids = tokenizer.encode(answer + template.eos_token).ids
    return Example(prompt_ids + answer_ids, len(prompt_ids))
