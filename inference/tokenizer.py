"""Tokenizer (Hugging Face ``tokenizers``), the model's own chat template (sandboxed jinja2), streaming detokenization."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from .config import read_json
from .errors import TokenizerError


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Same output as transformers' chat-template filter (ensure_ascii off, unlike json.dumps's default).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _template_environment() -> ImmutableSandboxedEnvironment:
    # The templates come from files a user downloaded: render them sandboxed, as transformers does.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class Tokenizer:
    def __init__(self, model_dir: Path | str):
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for both missing and malformed files
            problem = "file not found" if not path.exists() else f"cannot be parsed ({str(e).splitlines()[0]})"
            raise TokenizerError(path, problem) from None
        config_path = model_dir / "tokenizer_config.json"
        self.config = read_json(config_path, TokenizerError) if config_path.exists() else {}
        self.template_path, template = self._find_template(model_dir)
        try:
            self._template = _template_environment().from_string(template) if template else None
        except jinja2.TemplateSyntaxError as e:
            raise TokenizerError(self.template_path, f"chat template line {e.lineno}: {e.message}") from None
        self.eos_token_ids = {i for i in (self.token_id(self._token_text("eos_token")),) if i is not None}

    def _find_template(self, model_dir: Path) -> tuple[Path, str | None]:
        jinja_path = model_dir / "chat_template.jinja"  # newer transformers save the template beside the config
        if jinja_path.exists():
            return jinja_path, jinja_path.read_text(encoding="utf-8")
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return model_dir / "tokenizer_config.json", template

    def _token_text(self, key: str) -> str | None:
        value = self.config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self._tok.token_to_id(text)

    @property
    def special_tokens(self) -> frozenset[str]:
        """The texts of the added tokens marked special in tokenizer.json (``<|im_start|>``, ``<|endoftext|>``, ...):
        control tokens of the chat format, never text of a reply. Added tokens that are not special (Qwen3's
        ``<think>``) are left out."""
        return frozenset(t.content for t in self._tok.get_added_tokens_decoder().values() if t.special)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        # Chat-rendered prompts already hold every special token: add none (as apply_chat_template(tokenize=True) does).
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool = False, **extra
    ) -> str:
        if self._template is None:
            raise TokenizerError(self.template_path, "the model has no chat template")
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                bos_token=self._token_text("bos_token") or "",
                eos_token=self._token_text("eos_token") or "",
                **extra,
            )
        except jinja2.TemplateError as e:
            raise TokenizerError(self.template_path, f"chat template failed: {e}") from None


class StreamingDetokenizer:
    """Turns a growing token list into text deltas whose concatenation equals the full decode.

    A multi-byte character split across byte-level tokens decodes to U+FFFD until its last byte arrives, so tokens are
    held back while their decode ends in an incomplete character; only the held-back tokens are decoded each step.
    With ``drop_leading_space`` the text's first character is dropped when it is a space, as mlx_lm's streaming
    detokenizer does for generated text (a reply's first token often carries the space that separated it).
    """

    def __init__(self, tokenizer: Tokenizer, drop_leading_space: bool = False):
        self.tokenizer = tokenizer
        self.text = ""  # everything emitted so far
        self._held: list[int] = []  # tokens not yet emitted
        self._leading_space_pending = drop_leading_space

    def add(self, token: int) -> str:
        self._held.append(token)
        decoded = self.tokenizer.decode(self._held)
        if decoded.endswith("\ufffd"):
            return ""
        return self._emit(decoded)

    def flush(self) -> str:
        """Emit whatever is held back (at the end of a generation an incomplete character stays as U+FFFD)."""
        return self._emit(self.tokenizer.decode(self._held) if self._held else "")

    def _emit(self, decoded: str) -> str:
        self._held = []
        if self._leading_space_pending and decoded:
            self._leading_space_pending = False
            decoded = decoded[1:] if decoded[0] == " " else decoded
        self.text += decoded
        return decoded
