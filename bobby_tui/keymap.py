"""The `[keys]` table of config.toml checked against Textual's key names and the app's bindings.

Every remap that names an unknown key, or takes a key another action (or the app) already uses, is refused with
one warning and that action keeps its default keys. No Textual import: the CLI can check a config too.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Textual's names for keys that are not one printable character (textual.keys.Keys, without the modifiers)
_NAMED_KEYS = frozenset(
    {"backspace", "delete", "down", "end", "enter", "escape", "home", "insert", "left", "pagedown", "pageup",
     "return", "right", "space", "tab", "up"} | {f"f{n}" for n in range(1, 25)}
)
# Textual's short names for some characters' Unicode names (textual.keys.KEY_NAME_REPLACEMENTS)
_SHORT_NAMES = {"solidus": "slash", "reverse_solidus": "backslash", "commercial_at": "at", "hyphen_minus": "minus",
                "plus_sign": "plus", "low_line": "underscore"}
_MODIFIERS = ("ctrl", "alt", "shift", "meta", "super", "hyper")


def normalize_key(key: str) -> str | None:
    """`key` in Textual's form ("ctrl+g", "f5", "left_square_bracket" for "["), or None if it names no key a
    keyboard sends. Modifiers come first, joined by "+"; keys are the named ones and printable ASCII characters."""
    key = key.strip()
    if len(key) > 1:
        key = key.lower()
    if key.endswith("++"):  # "ctrl++": the plus key with a modifier
        modifiers, name = key[:-2].split("+"), "+"
    elif key == "+":
        modifiers, name = [], "+"
    else:
        *modifiers, name = key.split("+")
    if any(m not in _MODIFIERS for m in modifiers) or len(set(modifiers)) != len(modifiers):
        return None
    base = _base_name(name)
    return None if base is None else "+".join([*modifiers, base])


def _base_name(name: str) -> str | None:
    if name in _NAMED_KEYS:
        return name
    if len(name) == 1:
        character = name
    else:
        long_names = {short: long for long, short in _SHORT_NAMES.items()}
        try:
            character = unicodedata.lookup(long_names.get(name, name).replace("_", " "))
        except KeyError:
            return None
    # printable ASCII only: any other name (an emoji's, say "banana") is a key no keyboard sends as such
    if not (character.isascii() and character.isprintable()) or character.isspace():
        return None
    if character.isalnum():
        return character
    # Textual names punctuation by its Unicode name: "[" is left_square_bracket, "/" is slash
    unicode_name = unicodedata.name(character).lower().replace("-", "_").replace(" ", "_")
    return _SHORT_NAMES.get(unicode_name, unicode_name)


@dataclass(frozen=True)
class KeyPlan:
    keymap: dict[str, str]  # action -> "key,key" for Textual's App.set_keymap: the accepted remaps only
    keys: dict[str, list[str]]  # action -> its keys after the accepted remaps
    warnings: list[str]


def plan_keys(
    remaps: dict[str, str], defaults: dict[str, list[str]], names: dict[str, str], reserved: dict[str, str]
) -> KeyPlan:
    """Which remaps of `[keys]` to apply. `defaults`: action -> its default keys; `names`: action -> the name
    the user knows it by ("Spread"); `reserved`: key -> what of the app's own uses it."""
    warnings: list[str] = []
    proposed: dict[str, list[str]] = {}
    for action, value in remaps.items():
        if action not in defaults:
            continue  # unknown actions are reported by the caller, with the list of actions
        keys = [normalize_key(k) for k in value.split(",")]
        if None in keys or not keys:
            bad = next(k.strip() for k, n in zip(value.split(","), keys, strict=True) if n is None)
            warnings.append(f"[keys] {action} = {value!r}: {bad!r} is not a key name; "
                            f"{names[action]} keeps {', '.join(defaults[action])}")
        else:
            proposed[action] = keys
    while True:  # refusing one remap gives a key back to its default owner: check again until nothing clashes
        keys = {action: proposed.get(action, default) for action, default in defaults.items()}
        owners: dict[str, list[str]] = {}
        for action, action_keys in keys.items():
            for key in action_keys:
                owners.setdefault(key, []).append(action)
        clash = next(
            ((action, key) for action in proposed for key in proposed[action]
             if len(owners[key]) > 1 or key in reserved),
            None,
        )
        if clash is None:
            break
        action, key = clash
        others = [names[a] for a in owners[key] if a != action] + ([reserved[key]] if key in reserved else [])
        warnings.append(f"[keys] {action} = {remaps[action]!r}: {key} is already {' and '.join(others)}'s key; "
                        f"{names[action]} keeps {', '.join(defaults[action])}")
        del proposed[action]
    return KeyPlan({action: ",".join(k) for action, k in proposed.items()}, keys, warnings)
