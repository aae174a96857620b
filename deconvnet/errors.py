"""The one exception type for mistakes a user can make and fix, and the checks that raise it."""

import numbers


class DeconvNetError(ValueError):
    """Bad input from the user: an unknown layer, a channel out of range, a bad file.

    The message says what is wrong and what would be valid. The CLI prints it as one line and
    exits with status 2; from Python it is an ordinary ``ValueError`` subclass.
    """


def a(noun: str) -> str:
    """``noun`` with its indefinite article, for messages: "an ELU", "a ReLU", "an LSTM"."""
    spelled = len(noun) > 1 and noun[:2].isupper() and noun[0] in "FHLMNRSX"  # "el-es-..."
    vowel = noun[:1].lower() in ("a", "e", "i", "o", "u")
    return f"{'an' if vowel or spelled else 'a'} {noun}"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 projection"``, ``"3 projections"``."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def check_int(value: object, what: str) -> int:
    """``value`` as an int if it is one (a Python or numpy integer, or a one-element integer
    tensor); a bool, a float such as 1.5, a string or anything else raises ``DeconvNetError``
    rather than being rounded or read as 0/1."""
    kind = str(getattr(value, "dtype", "")).removeprefix("torch.")
    if hasattr(value, "numel") and kind.startswith(("int", "uint")) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DeconvNetError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def check_percentile(value: object, what: str = "percentile") -> float:
    """A percentile in (0, 100] as a float; a string, a bool, NaN or out of range raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DeconvNetError(f"{what} must be a number in (0, 100], got {value!r}")
    if not 0 < float(value) <= 100:
        raise DeconvNetError(f"{what} must be in (0, 100], got {value!r}")
    return float(value)
