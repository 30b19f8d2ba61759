"""Step 1: the fortunes corpus, cleaned into post-sized texts and split into train / validation.

Debian's `fortunes` package keeps one file per category under /usr/share/games/fortunes, entries
separated by lines holding only `%`, text hard-wrapped at ~72 columns for a terminal. A post wants
the wrapping undone, so wrapped lines are joined; short lines (verse, lists, dialogue) keep their
line breaks and an attribution (`-- Author`) keeps its own line.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
DICTIONARY = Path("/usr/share/dict/american-english")  # Debian's wamerican: English not built from the corpus
MIN_ENGLISH_SHARE = 0.9  # a base fortune with fewer dictionary words than this is dropped (plain_english)

# ascii-art is pictures, translate-me is not English, ethnic is jokes about ethnic groups: none
# belongs in a demo that writes posts. (The offensive `off/` files are another package, never read.)
DROPPED_CATEGORIES = {"ascii-art", "translate-me", "ethnic"}

# Entries with these words are dropped, whatever their category: the demo should not embarrass.
BLOCKED_WORDS = {
    "sodomize", "sodomy", "rape", "raped", "rapist", "nigger", "negro", "fag", "faggot", "queer",
    "whore", "slut", "cunt", "fuck", "fucking", "fucked", "schoolgirl", "schoolgirls", "nazi",
    "nazis", "hitler", "retard", "retarded", "midget", "midgets", "dwarf", "dwarfs", "penis",
    "vagina", "orgasm", "masturbate", "masturbation", "porn", "pornography", "hooker", "hookers",
    "abortion", "suicide", "kill", "killed", "murder", "vomiting", "genitals", "breasts",
}

# A demo post should land between the app's min_length (shorter drafts are retried) and its post limit, so
# the model learns only answers of that length.
MAX_CHARS = 300          # the app's default post_limit (Bluesky's)
MIN_CHARS = 80           # the app's default min_length
# Entries of other lengths are not answers, but they are English: the base model also reads them as plain text.
TEXT_LENGTHS = (12, 1500)
WRAPPED_LINE_CHARS = 50  # a line at least this long was wrapped by the file's author, not broken on purpose
VALID_PERCENT = 6        # share of each base category held out for validation
ADAPTER_VALID_PERCENT = 25  # the adapter category is small: hold out more so its perplexity means something

# The category whose voice the LoRA adapter learns. It is left out of the base model's training so
# the adapter visibly adds something: Zippy the Pinhead's non sequiturs, SHOUTED NOUNS and "!!".
ADAPTER_CATEGORY = "zippy"

# Common nouns the demo is measured on (tools/train_demo/targets.py: "Write a post about X"). They are never a
# training request's topic word, singular or plural, so the measure shows the model following a topic it was
# not drilled on; they do occur in the fortunes' texts.
EVAL_NOUNS = (
    "coffee", "river", "window", "bicycle", "winter", "mountain", "teacher", "bread", "music", "ocean",
    "doctor", "train", "letter", "forest", "city", "horse", "rain", "house", "weather", "phone",
)


# Words before a noun, and words that commonly follow one: a word seen between the two is taken for a noun.
DETERMINERS = {"a", "an", "the", "my", "your", "his", "her", "its", "our", "their", "this", "that", "these",
               "those", "every", "no", "some", "any", "each"}
AFTER_NOUN = {"is", "was", "are", "were", "of", "and", "or", "in", "on", "at", "to", "for", "with", "from",
              "that", "who", "which", "has", "had", "have", "will", "can", "would", "should", "could", "may",
              "must", "does", "did", "as", "by", "but", "than", "if", "when", "you", "i", "he", "she", "it", "they"}
STOP_WORDS = DETERMINERS | AFTER_NOUN | {
    "one", "thing", "things", "way", "lot", "kind", "sort", "time", "other", "others", "same", "more", "most",
    "less", "least", "only", "first", "last", "next", "best", "worst", "rest", "end", "whole", "part", "all",
    "what", "there", "here", "then", "now", "so", "not", "be", "been", "being", "do", "don't", "it's", "i'm",
}
MIN_NOUN_COUNT = 2  # seen as a noun at least this often in the corpus,
MIN_NOUN_SHARE = 0.2  # and in at least this share of its occurrences ("the good of" does not make "good" a noun)
TOPIC_WORD_CHARS = (3, 16)
ATTRIBUTION = "\n-- "  # what opens an entry's attribution line (_clean_entry); no body line starts with "--"


@dataclass(frozen=True)
class Fortune:
    category: str
    text: str
    topics: tuple[str, ...] = ()  # nouns of the text a request may name (never one of EVAL_NOUNS)


def _clean_entry(raw: str, lengths: tuple[int, int]) -> str | None:
    """One entry as post text, or None when it is blocked or its length is outside `lengths`."""
    raw = re.sub(r".\x08", "", raw)  # overstrike underlining: `_\bx` prints an underlined x
    if "\ufffd" in raw or re.search(r"[\x00-\x08\x0b-\x1f\x7f]", raw):
        return None
    body: list[str] = []
    attribution: list[str] = []
    for line in raw.split("\n"):
        stripped = " ".join(line.split())
        if not stripped:
            continue
        if stripped.startswith("--") or attribution:
            attribution.append(stripped)
            continue
        starts_paragraph = line[:1] in (" ", "\t")
        if body and not body[-1].endswith("\n") and not starts_paragraph:
            body[-1] += " " + stripped
        else:
            if body and not body[-1].endswith("\n"):
                body[-1] += "\n"
            body.append(stripped)
        if len(stripped) < WRAPPED_LINE_CHARS:
            body[-1] += "\n"
    if not body:
        return None
    text = "".join(body).strip()
    if attribution:
        text += ATTRIBUTION + " ".join(attribution).lstrip("- ").strip()
    words = set(re.findall(r"[a-z]+", text.lower()))
    if words & BLOCKED_WORDS or not lengths[0] <= len(text) <= lengths[1]:
        return None
    return text


def read_category(path: Path, lengths: tuple[int, int]) -> list[Fortune]:
    raw = path.read_bytes().decode("utf-8", errors="replace")
    entries = re.split(r"^%$", raw, flags=re.MULTILINE)
    texts = (_clean_entry(entry, lengths) for entry in entries)
    return [Fortune(path.name, text) for text in texts if text]


def read_fortunes(
    fortunes_dir: Path = FORTUNES_DIR, lengths: tuple[int, int] = (MIN_CHARS, MAX_CHARS)
) -> list[Fortune]:
    if not fortunes_dir.is_dir():
        raise SystemExit(f"{fortunes_dir}: not found; run `apt-get install fortunes` first")
    seen: set[str] = set()
    fortunes: list[Fortune] = []
    for path in sorted(fortunes_dir.iterdir()):
        if path.suffix or not path.is_file() or path.name in DROPPED_CATEGORIES:
            continue  # .dat indexes and .u8 links sit next to each category file
        for fortune in read_category(path, lengths):
            if fortune.text not in seen:
                seen.add(fortune.text)
                fortunes.append(fortune)
    return fortunes


def is_validation(fortune: Fortune) -> bool:
    """A stable split: the same entry lands on the same side on every run."""
    digest = hashlib.sha256(fortune.text.encode()).digest()
    percent = ADAPTER_VALID_PERCENT if fortune.category == ADAPTER_CATEGORY else VALID_PERCENT
    return digest[0] * 100 // 256 < percent


def write_splits(fortunes: list[Fortune], out_dir: Path) -> dict[str, int]:
    """train/valid for the base model (all but the adapter category), adapter_train/adapter_valid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[Fortune]] = {"train": [], "valid": [], "adapter_train": [], "adapter_valid": []}
    for fortune in fortunes:
        prefix = "adapter_" if fortune.category == ADAPTER_CATEGORY else ""
        splits[prefix + ("valid" if is_validation(fortune) else "train")].append(fortune)
    for name, items in splits.items():
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for fortune in items:
                f.write(json.dumps(asdict(fortune)) + "\n")
    return {name: len(items) for name, items in splits.items()}


def write_texts(fortunes: list[Fortune], out_dir: Path) -> int:
    """text_train.jsonl: base-category entries outside the answers' lengths, read as plain text."""
    texts = [f for f in fortunes if f.category != ADAPTER_CATEGORY and not MIN_CHARS <= len(f.text) <= MAX_CHARS]
    with open(out_dir / "text_train.jsonl", "w") as f:
        for fortune in texts:
            f.write(json.dumps(asdict(fortune)) + "\n")
    return len(texts)


def without_attribution(fortune: Fortune) -> Fortune:
    """The fortune with its "-- Author" line cut off, keeping the topics its body still names."""
    text = fortune.text.split(ATTRIBUTION, 1)[0]
    words = set(_tokens(text))
    return Fortune(fortune.category, text, tuple(t for t in fortune.topics if t in words))


def unattributed_answers(fortunes: list[Fortune]) -> tuple[list[Fortune], list[Fortune]]:
    """(answers, plain texts): every fortune without its attribution line, as a post has none; one whose body alone
    is under MIN_CHARS stays a plain text, attribution and all, so that no answer teaches a post the app retries."""
    answers, texts = [], []
    for fortune in fortunes:
        body = without_attribution(fortune)
        if len(body.text) >= MIN_CHARS:
            answers.append(body)
        else:
            texts.append(fortune)
    return answers, texts


def load_split(path: Path) -> list[Fortune]:
    with open(path) as f:
        return [Fortune(**dict(record, topics=tuple(record.get("topics", ())))) for record in map(json.loads, f)]


def _tokens(text: str) -> list[str]:
    """Lowercased words, and "." for any punctuation between them (a noun often ends a clause)."""
    return re.findall(r"[a-z][a-z']*|[.,;:!?()\"-]", text.lower())


def corpus_nouns(fortunes: list[Fortune]) -> set[str]:
    """Words the corpus uses as nouns: after a determiner and then before punctuation or a function word,
    at least MIN_NOUN_COUNT times ("the dog is", "a dog." but not "the big dog"). No tagger needed."""
    counts: dict[str, int] = {}
    as_noun: dict[str, int] = {}
    for fortune in fortunes:
        tokens = _tokens(fortune.text) + ["."]
        for word in tokens:
            counts[word] = counts.get(word, 0) + 1
        for before, word, after in zip(tokens, tokens[1:], tokens[2:], strict=False):
            if before in DETERMINERS and word[0].isalpha() and (not after[0].isalpha() or after in AFTER_NOUN):
                as_noun[word] = as_noun.get(word, 0) + 1
    low, high = TOPIC_WORD_CHARS
    return {w for w, n in as_noun.items()
            if n >= MIN_NOUN_COUNT and n >= MIN_NOUN_SHARE * counts[w] and low <= len(w) <= high
            and w not in STOP_WORDS and "'" not in w}


def plural(noun: str) -> str:
    """The regular English plural (the eval nouns are all regular)."""
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    return noun + "s"


def excluded_topics() -> set[str]:
    return set(EVAL_NOUNS) | {plural(n) for n in EVAL_NOUNS}


def mentions_eval_noun(text: str) -> bool:
    """Whether the text holds one of EVAL_NOUNS or its plural, in any case."""
    words = "|".join(sorted(excluded_topics()))
    return re.search(rf"\b({words})\b", text, re.IGNORECASE) is not None


def swap_noun(text: str, noun: str, replacement: str) -> str:
    """``text`` with every ``noun`` (and its plural) replaced by ``replacement`` (and its plural), case kept: a
    fortune about a word it was not written about, which only a request naming that word can predict."""
    forms = {noun: replacement, plural(noun): plural(replacement)}

    def replace(match: re.Match) -> str:
        word = match.group(0)
        new = forms[word.lower()]
        if len(word) > 1 and word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return re.sub(rf"\b({re.escape(plural(noun))}|{re.escape(noun)})\b", replace, text, flags=re.IGNORECASE)


def dictionary_nouns(dictionary: Path = DICTIONARY) -> list[str]:
    """Countable nouns of the dictionary, none of EVAL_NOUNS or their plurals, none blocked: lowercase words with a
    possessive ("cart's") and a plural ("carts") listed (wamerican lists those forms for nouns only), not themselves
    ending in "s". Some 13,000 words: the swaps and drills draw from far more nouns than the corpus's ~1,000, so
    only a copy of the request's word, not a word learned per noun, predicts them."""
    listed = set(dictionary.read_text(encoding="utf-8", errors="replace").split())
    low, high = TOPIC_WORD_CHARS
    return sorted(w for w in listed
                  if re.fullmatch(rf"[a-z]{{{low},{high}}}", w) and not w.endswith("s") and f"{w}'s" in listed
                  and plural(w) in listed and w not in excluded_topics() and w not in BLOCKED_WORDS)


def with_topics(fortunes: list[Fortune]) -> list[Fortune]:
    """Each fortune with the corpus nouns of its own text that a request may name, in text order."""
    nouns = corpus_nouns(fortunes) - excluded_topics()
    out = []
    for fortune in fortunes:
        words = dict.fromkeys(w for w in _tokens(fortune.text) if w in nouns)
        out.append(Fortune(fortune.category, fortune.text, tuple(words)))
    return out


def vocabulary(fortunes: list[Fortune]) -> list[str]:
    """Every word of the corpus, lowercased."""
    return sorted({word.lower() for f in fortunes for word in words_of(f.text)})


def words_of(text: str) -> list[str]:
    """Whitespace-separated words with the punctuation around them stripped; tokens without a letter skipped."""
    stripped = (w.strip("\"'`.,;:!?()[]{}<>*_-/\\|~") for w in text.split())
    return [w for w in stripped if re.search(r"[A-Za-z]", w)]


def english_words(path: Path = DICTIONARY) -> set[str] | None:
    """The dictionary's words, lowercased (wamerican lists proper names capitalised); None when not installed."""
    if not path.exists():
        return None
    return {line.strip().lower() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()}


def is_english(word: str, dictionary: set[str]) -> bool:
    """In the dictionary (lowercased), or every part of a hyphenated compound is."""
    lower = word.lower()
    if lower in dictionary:
        return True
    parts = [p for p in re.split(r"[-/]", lower) if p]
    return len(parts) > 1 and all(p in dictionary for p in parts)


def english_share(text: str, dictionary: set[str]) -> float:
    words = words_of(text)
    return sum(is_english(w, dictionary) for w in words) / len(words) if words else 0.0


def plain_english(fortunes: list[Fortune], dictionary: set[str]) -> list[Fortune]:
    """Base-model fortunes in plain English: IRC nicknames, mail addresses, stardates and code mostly go. The
    adapter's category keeps every entry: its made-up words are its voice, and it is small."""
    return [f for f in fortunes
            if f.category == ADAPTER_CATEGORY or english_share(f.text, dictionary) >= MIN_ENGLISH_SHARE]
