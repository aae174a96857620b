"""The one exception type for mistakes a user can make and fix."""


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
