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

MAX_CHARS = 300          # the app's default post limit
MIN_CHARS = 12
WRAPPED_LINE_CHARS = 50  # a line at least this long was wrapped by the file's author, not broken on purpose
VALID_PERCENT = 6        # share of each base category held out for validation
ADAPTER_VALID_PERCENT = 15  # the adapter category is small: hold out more so its perplexity means something

# The category whose voice the LoRA adapter learns. It is left out of the base model's training so
# the adapter visibly adds something: Zippy the Pinhead's non sequiturs, SHOUTED NOUNS and "!!".
ADAPTER_CATEGORY = "zippy"

# What a user would call each category when asking for a post about it; None: no topic to name.
TOPICS = {
    "art": "art", "computers": "computers", "cookie": None, "debian": "Debian",
    "definitions": "definitions", "disclaimer": "disclaimers", "drugs": "drugs",
    "education": "education", "food": "food", "fortunes": None, "goedel": "logic",
    "humorists": "humor", "kids": "kids", "knghtbrd": None, "law": "the law", "linux": "Linux",
    "linuxcookie": "Linux", "literature": "literature", "love": "love", "magic": "magic",
    "medicine": "medicine", "men-women": "men and women", "miscellaneous": None, "news": "the news",
    "paradoxum": "paradoxes", "people": "people", "perl": "Perl", "pets": "pets",
    "platitudes": "wisdom", "politics": "politics", "pratchett": "Pratchett", "riddles": "riddles",
    "science": "science", "songs-poems": "songs", "sports": "sports", "startrek": "Star Trek",
    "tao": "the Tao", "wisdom": "wisdom", "work": "work", "zippy": None,
}


@dataclass(frozen=True)
class Fortune:
    category: str
    text: str


def _clean_entry(raw: str) -> str | None:
    """One entry as post text, or None when it does not make a good post."""
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
        text += "\n-- " + " ".join(attribution).lstrip("- ").strip()
    words = set(re.findall(r"[a-z]+", text.lower()))
    if words & BLOCKED_WORDS or not MIN_CHARS <= len(text) <= MAX_CHARS:
        return None
    return text


def read_category(path: Path) -> list[Fortune]:
    raw = path.read_bytes().decode("utf-8", errors="replace")
    entries = re.split(r"^%$", raw, flags=re.MULTILINE)
    texts = (_clean_entry(entry) for entry in entries)
    return [Fortune(path.name, text) for text in texts if text]


def read_fortunes(fortunes_dir: Path = FORTUNES_DIR) -> list[Fortune]:
    if not fortunes_dir.is_dir():
        raise SystemExit(f"{fortunes_dir}: not found; run `apt-get install fortunes` first")
    seen: set[str] = set()
    fortunes: list[Fortune] = []
    for path in sorted(fortunes_dir.iterdir()):
        if path.suffix or not path.is_file() or path.name in DROPPED_CATEGORIES:
            continue  # .dat indexes and .u8 links sit next to each category file
        for fortune in read_category(path):
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


def load_split(path: Path) -> list[Fortune]:
    with open(path) as f:
        return [Fortune(**json.loads(line)) for line in f]


def vocabulary(fortunes: list[Fortune]) -> list[str]:
    """Every word of the corpus, lowercased with the punctuation around it stripped."""
    return sorted({word for f in fortunes for word in words_of(f.text)})


def words_of(text: str) -> list[str]:
    words = (w.strip("\"'`.,;:!?()[]{}<>*_-/\\|").lower() for w in text.split())
    return [w for w in words if w]
