"""Console passwords that are long enough but still guessable: a common password
(from the list shipped beside this module) dressed up with capitals, digits or
symbols at either end, or look-alike letters (`P@ssw0rd1234`), or one character,
or a run of the keyboard or the number line."""

from __future__ import annotations

import functools
from importlib.resources import files

# The look-alike substitutions people make to satisfy a "complex password" rule.
_LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
                       "!": "i", "+": "t", "|": "l"})
_DECORATION = "0123456789!@#$%^&*()_+-=.,?~`'\" "
_RUNS = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "qwertyuiopasdfghjklzxcvbnm", "1qaz2wsx3edc4rfv5tgb6yhn7ujm")


@functools.cache
def common_passwords() -> frozenset[str]:
    text = files("schoolgate.reports").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def weakness(password: str) -> str | None:
    """Why this password is easy to guess, or None."""
    lowered = password.lower()
    core = lowered.strip(_DECORATION)
    common = common_passwords()
    for candidate in {lowered, core, core.translate(_LEET), lowered.translate(_LEET).strip(_DECORATION)}:
        if candidate in common or (candidate and _repeats_one_of(candidate, common)):
            return "it is one of the most common passwords, dressed up"
    if not core:
        return "it is only digits and symbols"
    if len(set(lowered)) <= 2:
        return "it is made of too few different characters"
    if any(lowered in run or lowered in run[::-1] for run in _RUNS) or _is_run(lowered):
        return "it is a run of the keyboard or the alphabet"
    return None


def _repeats_one_of(text: str, common: frozenset[str]) -> bool:
    """`monkeymonkey`, `abc123abc123`: a common password said more than once."""
    for size in range(1, len(text) // 2 + 1):
        if len(text) % size == 0 and text[:size] * (len(text) // size) == text and text[:size] in common:
            return True
    return False


def _is_run(text: str) -> bool:
    """Each character one after the other (`abcdefghijkl`, `987654321098`)."""
    steps = {(ord(b) - ord(a)) % 10 if a.isdigit() and b.isdigit() else ord(b) - ord(a)
             for a, b in zip(text, text[1:], strict=False)}
    return len(steps) == 1 and steps <= {1, -1, 9}
