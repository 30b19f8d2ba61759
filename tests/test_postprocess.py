import pytest

from bobby_tui.config import PostProcess
from bobby_tui.postprocess import ELLIPSIS, enforce_limit, post_length, postprocess, strip_think

ALL_OFF = PostProcess(strip_think=False, trim=False, strip_hashtags=False, strip_emoji=False, enforce_limit=False)


def test_think_blocks_are_dropped_closed_unclosed_and_stray():
    assert strip_think("<think>plan</think>Hello") == "Hello"
    assert strip_think("A <think>x</think>B<think>y\nz</think>C") == "A BC"
    assert strip_think("Hello <think>still thinking") == "Hello "
    assert strip_think("leftover reasoning</think>Post") == "Post"
    assert strip_think("no tags at all") == "no tags at all"


def test_each_switch_is_honoured():
    text = "  <think>x</think> Big news #launch 🚀 today  "
    assert postprocess(text, ALL_OFF, 300) == text
    assert postprocess(text, PostProcess(), 300) == "Big news #launch 🚀 today"
    assert postprocess(text, PostProcess(strip_hashtags=True), 300) == "Big news 🚀 today"
    assert postprocess(text, PostProcess(strip_emoji=True), 300) == "Big news #launch today"
    assert postprocess(text, PostProcess(strip_hashtags=True, strip_emoji=True), 300) == "Big news today"


def test_hashtag_stripping_keeps_punctuation_tidy_and_leaves_non_tags():
    opts = PostProcess(strip_hashtags=True)
    assert postprocess("Shipped it #dev, finally #win.", opts, 300) == "Shipped it, finally."
    assert postprocess("We're #1 in the store! #launch", opts, 300) == "We're #1 in the store!"
    assert postprocess("We are #1 and C# is fine &#38;", opts, 300) == "We are #1 and C# is fine &#38;"
    assert postprocess("Line one\n#tag #other", opts, 300) == "Line one"


@pytest.mark.parametrize("text, kept", [
    ("Docs at https://x.y/a#section and https://x.y/#top today",
     "Docs at https://x.y/a#section and https://x.y/#top today"),
    ("See example.com/guide#install or www.example.org/#faq", "See example.com/guide#install or www.example.org/#faq"),
    ("#1 #2024 #_1 C# F# &#38; a#b #a#b", "#1 #2024 #_1 C# F# &#38; a#b #a#b"),  # no letter, or no boundary
    ("#1st place #日本語 #हिन्दी ＃全角 #tag's day", "place 's day"),  # letters of any script, the fullwidth sign
    ("love ❤️#love and #️⃣ keycap", "love ❤️ and #️⃣ keycap"),  # after an emoji selector; not the keycap emoji
])
def test_hashtags_are_what_twitter_and_bluesky_link(text, kept):
    assert postprocess(text, PostProcess(strip_hashtags=True), 300) == kept


def test_emoji_sequences_go_whole():
    opts = PostProcess(strip_emoji=True)
    # family (ZWJ sequence), flag, heart with selector, skin tone
    assert postprocess("Hi 👨‍👩‍👧 from 🇫🇷 with ❤️ and 👍🏽!", opts, 300) == "Hi from with and!"
    assert postprocess("café — naïve “quotes” 10°C", opts, 300) == "café — naïve “quotes” 10°C"


@pytest.mark.parametrize("text, kept", [
    ("keycaps 1️⃣ 1⃣ #️⃣ done", "keycaps done"),
    ("flags 🇯🇵 🏴󠁧󠁢󠁳󠁣󠁴󠁿 done", "flags done"),  # a regional pair, a subdivision tag sequence
    ("coder 🧑🏽‍💻 tone 🏽 done", "coder tone done"),  # skin tone inside a ZWJ sequence, and alone
    ("watch ⌚ star ⭐ mahjong 🀄 done", "watch star mahjong done"),  # emoji by default, no selector needed
    ("© 2026 Acme™ → ∑x ≤ 3, ★ ½ ‼ ↔ ° ∞", "© 2026 Acme™ → ∑x ≤ 3, ★ ½ ‼ ↔ ° ∞"),  # symbols shown as text
    ("©️ and ‼️ asked to be emoji", "and asked to be emoji"),  # the same with the emoji selector
])
def test_strip_emoji_removes_every_emoji_and_keeps_symbols(text, kept):
    assert postprocess(text, PostProcess(strip_emoji=True), 300) == kept


def test_limit_cuts_at_the_last_sentence_end_that_fits():
    text = "First sentence here. Second one is longer! Third would overflow the limit entirely."
    cut = enforce_limit(text, 45)
    assert cut == "First sentence here. Second one is longer!"
    assert len(cut) <= 45


def test_limit_falls_back_to_a_word_boundary_with_ellipsis():
    text = "one two three four five six seven eight nine ten eleven twelve"
    cut = enforce_limit(text, 20)
    assert cut == "one two three four" + ELLIPSIS
    assert len(cut) <= 20
    # a sentence end in the first half of the limit loses too much: word cut instead
    text = "Short. then a very long run of words without any end at all in sight"
    cut = enforce_limit(text, 40)
    assert cut.endswith(ELLIPSIS) and len(cut) <= 40 and cut.startswith("Short. then a very long")


def test_limit_handles_one_giant_word_and_short_text():
    assert enforce_limit("x" * 50, 10) == "x" * 9 + ELLIPSIS
    assert enforce_limit("fits.", 10) == "fits."
    assert enforce_limit("abc", 0) == ""


def test_sentence_end_inside_quotes_counts():
    text = 'He said "ship it." Then everything broke and we spent the night fixing'
    assert enforce_limit(text, 30) == 'He said "ship it."'


def test_postprocess_applies_the_limit_after_cleaning():
    opts = PostProcess(strip_hashtags=True)
    text = "<think>" + "long reasoning " * 50 + "</think>Done! #a #b #c #d #e #f"
    assert postprocess(text, opts, 10) == "Done!"


def test_post_length_counts_graphemes_as_bluesky_does():
    assert post_length("") == 0
    assert post_length("hello") == 5
    assert post_length("🇫🇷") == 1 and len("🇫🇷") == 2  # a flag: two regional indicators
    assert post_length("👨‍👩‍👧") == 1 and len("👨‍👩‍👧") == 5  # a ZWJ family
    assert post_length("👍🏽") == 1  # a skin tone
    assert post_length("e\u0301") == 1  # e + combining acute
    assert post_length("한국어") == 3 and post_length("\u1100\u1161\u11a8") == 1  # conjoining jamo: one syllable
    assert post_length("a\r\nb") == 3


def test_the_limit_counts_graphemes_and_never_splits_one():
    flags = "🇫🇷" * 10
    assert enforce_limit(flags, 10) == flags  # 10 graphemes, 20 code points: within the limit
    cut = enforce_limit(flags + "🇫🇷", 10)
    assert post_length(cut) == 10 and cut == "🇫🇷" * 9 + ELLIPSIS  # whole flags, never half of one
    accented = "Cafe\u0301 " * 20  # each word 5 graphemes + space
    short = enforce_limit(accented.strip(), 30)
    assert post_length(short) <= 30 and short.endswith(ELLIPSIS) and "\u0301" + ELLIPSIS in short
    sentences = "Un café. 👨‍👩‍👧 ok. " + "More words here " * 5
    assert enforce_limit(sentences, 15) == "Un café. 👨‍👩‍👧 ok."  # 15 graphemes, 19 code points
