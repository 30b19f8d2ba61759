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

from .corpus import Fortune

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


def request_for(fortune: Fortune, rng: random.Random) -> str:
    """A user request this fortune answers: most often about one of its nouns, else a plain one."""
    if fortune.topics and rng.random() < TOPIC_SHARE:
        return rng.choice(TOPIC_REQUESTS).format(word=rng.choice(fortune.topics))
    return rng.choice(GENERIC_REQUESTS)


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
