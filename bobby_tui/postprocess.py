"""Turning a decoded draft into a post: each step is switched by the config's [postprocess] table."""

from __future__ import annotations

import re

import emoji
import regex

from bobby_tui.config import PostProcess

# A closed <think> block, an unclosed one running to the end, and a stray closing tag whose opening
# tag was part of the prompt: everything up to it is the model's thinking.
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_THINK_UNCLOSED = re.compile(r"<think>.*\Z", re.DOTALL)
_THINK_STRAY_END = re.compile(r"\A.*?</think>", re.DOTALL)

# What Twitter (twitter-text's extractHashtags) and Bluesky count as a hashtag: '#' (or the fullwidth '＃') after a
# boundary (the start, a variation selector, or anything but a hashtag character or '&'), not before an emoji selector
# or keycap; then letters, marks, digits, '_' and twitter-text's joiners, taken whole, not followed by another '#' or
# '://' (so `#a#b` is no tag); and at least one letter or mark among them (so `#1` is no tag).
_TAG_CHAR = (r"[\p{L}\p{M}\p{Nd}_\u200c\u200d\ua67e\u05be\u05f3\u05f4\uff5e\u301c\u309b\u309c\u30a0\u30fb\u3003"
             r"\u0f0b\u0f0c\u00b7]")
_HASHTAG = regex.compile(rf"(?:(?<=[\ufe0e\ufe0f])|(?<!{_TAG_CHAR}|&))[#＃](?![\ufe0f\u20e3]){_TAG_CHAR}*+(?![#＃]|://)")
_LETTER = regex.compile(r"[\p{L}\p{M}]")
# Spans a hashtag inside does not count (a URL's #fragment): a scheme or www. URL, or a bare domain with a path,
# up to the next space.
_URL = regex.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.|\b(?:[\p{L}\p{Nd}-]+\.)+\p{L}{2,}/)\S*", regex.IGNORECASE)

_SPACE_RUNS = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([.,!?;:])")
# The end of a sentence: terminal punctuation, optionally closing quotes/brackets, then space or the end.
_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*(?=\s|\Z)")

ELLIPSIS = "\u2026"


def postprocess(text: str, opts: PostProcess, limit: int) -> str:
    if opts.strip_think:
        text = strip_think(text)
    if opts.strip_hashtags:
        text = _tidy_spaces(strip_hashtags(text))
    if opts.strip_emoji:
        text = _tidy_spaces(strip_emoji(text))
    if opts.trim:
        text = text.strip()
    if opts.enforce_limit:
        text = enforce_limit(text, limit)
    return text


def strip_think(text: str) -> str:
    text = _THINK_BLOCK.sub("", text)
    text = _THINK_UNCLOSED.sub("", text)
    return _THINK_STRAY_END.sub("", text)


def hashtags(text: str) -> list[tuple[int, int]]:
    """The (start, end) spans of the hashtags a platform would link in `text`, URLs' fragments left out."""
    urls = [m.span() for m in _URL.finditer(text)]
    return [m.span() for m in _HASHTAG.finditer(text)
            if _LETTER.search(m.group()) and not any(a <= m.start() < b for a, b in urls)]


def strip_hashtags(text: str) -> str:
    return _cut(text, hashtags(text))


def strip_emoji(text: str) -> str:
    """Remove every emoji (the `emoji` package's list: ZWJ sequences, flags, keycaps, skin tones, with their selectors),
    keeping characters that show as text unless asked otherwise: a lone ©, ™, ‼ or ↔ with no emoji selector (Unicode's
    Emoji_Presentation=No) is a symbol, not an emoji; arrows, math and other symbols are never emoji."""
    spans = [
        (m["match_start"], m["match_end"]) for m in emoji.emoji_list(text)
        if not (len(m["emoji"]) == 1 and emoji.EMOJI_DATA[m["emoji"]]["status"] == emoji.STATUS["unqualified"])
    ]
    return _cut(text, spans)


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        last = end
    return "".join(out) + text[last:]


# One user-perceived character: an extended grapheme cluster (Unicode's UAX 29, as Intl.Segmenter splits text).
_GRAPHEME = regex.compile(r"\X")


def post_length(text: str) -> int:
    """The length Bluesky counts: graphemes, so a flag, a ZWJ family or a letter with combining marks is 1, as it
    shows (Python's len counts code points: 🇫🇷 would be 2, 👨‍👩‍👧 5)."""
    return sum(1 for _ in _GRAPHEME.finditer(text))


def _grapheme_offsets(text: str) -> list[int]:
    """offsets[i]: where grapheme i starts in `text` (code points); the last entry is len(text)."""
    return [m.start() for m in _GRAPHEME.finditer(text)] + [len(text)]


def enforce_limit(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` graphemes (post_length) at a sentence end, else at a word boundary with an
    ellipsis; a grapheme is never split.

    A sentence cut that would keep less than half the limit loses too much of the post, so the word cut
    is used instead.
    """
    offsets = _grapheme_offsets(text)
    if len(offsets) - 1 <= limit:
        return text
    end = offsets[limit]  # the code point offset where `limit` graphemes end
    sentence_cut = max((m.end() for m in _SENTENCE_END.finditer(text, 0, end + 1) if m.end() <= end), default=0)
    if sentence_cut in offsets and offsets.index(sentence_cut) >= limit // 2:
        return text[:sentence_cut].rstrip()
    room = text[: offsets[max(limit - post_length(ELLIPSIS), 0)]]
    if not text[len(room)].isspace():
        # the cut fell inside a word: drop that partial word when an earlier boundary exists
        boundary = max(room.rfind(" "), room.rfind("\n"), room.rfind("\t"))
        if boundary > 0 and room[:boundary].strip():
            room = room[:boundary]
    kept = room.rstrip().rstrip(",;:-").rstrip() + ELLIPSIS
    return kept[: _grapheme_offsets(kept)[min(limit, post_length(kept))]]


def _tidy_spaces(text: str) -> str:
    """Close the gaps left by removed tokens: no double spaces, no space before punctuation, no trailing spaces."""
    text = _SPACE_RUNS.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))
