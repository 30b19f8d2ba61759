"""Turning a decoded draft into a post: each step is switched by the config's [postprocess] table."""

from __future__ import annotations

import re

from bobby_tui.config import PostProcess

# A closed <think> block, an unclosed one running to the end, and a stray closing tag whose opening
# tag was part of the prompt: everything up to it is the model's thinking.
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_THINK_UNCLOSED = re.compile(r"<think>.*\Z", re.DOTALL)
_THINK_STRAY_END = re.compile(r"\A.*?</think>", re.DOTALL)

_HASHTAG = re.compile(r"(?<![\w&])#\w+")

# Pictographs, dingbats, flags, skin tones and the joiners/selectors that glue emoji sequences.
_EMOJI = re.compile(
    "["
    "\U0001F000-\U0001FAFF"  # mahjong .. symbols & pictographs extended-A (incl. flags, skin tones)
    "\u2600-\u27BF"  # misc symbols, dingbats
    "\u2B00-\u2BFF"  # arrows and stars such as the star emoji
    "\u2300-\u23FF"  # watch, hourglass, keyboard ...
    "\uFE0E\uFE0F\u200D\u20E3"  # variation selectors, zero-width joiner, keycap
    "\U000E0020-\U000E007F"  # tag characters (subdivision flags)
    "]"
)

_SPACE_RUNS = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([.,!?;:])")
# The end of a sentence: terminal punctuation, optionally closing quotes/brackets, then space or the end.
_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*(?=\s|\Z)")

ELLIPSIS = "\u2026"


def postprocess(text: str, opts: PostProcess, limit: int) -> str:
    if opts.strip_think:
        text = strip_think(text)
    if opts.strip_hashtags:
        text = _tidy_spaces(_HASHTAG.sub("", text))
    if opts.strip_emoji:
        text = _tidy_spaces(_EMOJI.sub("", text))
    if opts.trim:
        text = text.strip()
    if opts.enforce_limit:
        text = enforce_limit(text, limit)
    return text


def strip_think(text: str) -> str:
    text = _THINK_BLOCK.sub("", text)
    text = _THINK_UNCLOSED.sub("", text)
    return _THINK_STRAY_END.sub("", text)


def enforce_limit(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` characters at a sentence end, else at a word boundary with an ellipsis.

    A sentence cut that would keep less than half the limit loses too much of the post, so the word cut
    is used instead.
    """
    if len(text) <= limit:
        return text
    sentence_cut = max((m.end() for m in _SENTENCE_END.finditer(text, 0, limit + 1) if m.end() <= limit), default=0)
    if sentence_cut >= limit // 2:
        return text[:sentence_cut].rstrip()
    room = text[: max(limit - len(ELLIPSIS), 0)]
    if not text[len(room)].isspace():
        # the cut fell inside a word: drop that partial word when an earlier boundary exists
        boundary = max(room.rfind(" "), room.rfind("\n"), room.rfind("\t"))
        if boundary > 0 and room[:boundary].strip():
            room = room[:boundary]
    return (room.rstrip().rstrip(",;:-").rstrip() + ELLIPSIS)[:limit]


def _tidy_spaces(text: str) -> str:
    """Close the gaps left by removed tokens: no double spaces, no space before punctuation, no trailing spaces."""
    text = _SPACE_RUNS.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))
