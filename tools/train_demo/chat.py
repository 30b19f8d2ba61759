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

from .corpus import TOPICS, Fortune

GENERIC_REQUESTS = [
    "Write a post.", "write a post", "Write a post", "Write something.", "Post something.",
    "Give me a post.", "Write a short post.", "Write me a post.", "Say something clever.",
    "Write a quote.",
]
TOPIC_REQUESTS = [
    "Write a post about {topic}.", "write a post about {topic}", "Write something about {topic}.",
    "Post something about {topic}.", "Give me a quote about {topic}.", "Write a short post on {topic}.",
]


def request_for(fortune: Fortune, rng: random.Random) -> str:
    """A user request this fortune answers: about its category half of the time, when it has one."""
    topic = TOPICS.get(fortune.category)
    if topic and rng.random() < 0.5:
        return rng.choice(TOPIC_REQUESTS).format(topic=topic)
    return rng.choice(GENERIC_REQUESTS)


def all_requests() -> list[str]:
    topics = sorted({t for t in TOPICS.values() if t})
    return GENERIC_REQUESTS + [r.format(topic=t) for r in TOPIC_REQUESTS for t in topics]


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
