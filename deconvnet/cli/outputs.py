"""Output files of the commands: named from what they show, written atomically, never over a
different earlier result.

A file of the chosen name that already holds something else is kept; the new one gets the first
free numbered name (``-2``, ``-3``, ...). Re-running the same thing reuses the name.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Mapping
from pathlib import Path

import typer

from deconvnet.files import write_bytes_atomic


def save_outputs(
    directory: Path, base: str, contents: Mapping[str, bytes]
) -> list[tuple[Path, str]]:
    """Write ``{suffix: bytes}`` as ``directory/base{suffix}``, atomically, never over a
    different earlier result.

    The name is the first of ``base``, ``base-2``, ``base-3``, ... where each file is either
    absent or already holds exactly these bytes (then it is left as it is).

    Parameters
    ----------
    directory
        Where the files go (made if missing).
    base
        The file name without its suffix.
    contents
        Each suffix (``".png"``, ``"_conv1.png"``, ``".csv"``) with the bytes it holds.

    Returns
    -------
    list of (Path, str)
        Each path with ``"new"``, ``"same"`` (already there, identical) or ``"renamed"``
        (written under a numbered name because the plain one holds a different result).

    Raises
    ------
    DeconvNetError
        If a file cannot be written (``write_bytes_atomic``'s message).
    """
    for number in itertools.count(1):
        name = base if number == 1 else f"{base}-{number}"
        paths = {suffix: directory / f"{name}{suffix}" for suffix in contents}
        states = {suffix: _state(path, contents[suffix]) for suffix, path in paths.items()}
        if "taken" not in states.values():
            break
    written = []
    for suffix, path in paths.items():
        if states[suffix] == "free":
            write_bytes_atomic(path, contents[suffix])
        state = "same" if states[suffix] == "same" else ("renamed" if number > 1 else "new")
        written.append((path, state))
    return written


def _state(path: Path, data: bytes) -> str:
    if not path.exists() and not path.is_symlink():
        return "free"
    try:
        same = path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        same = False
    return "same" if same else "taken"


def written_note(path: Path, state: str, base: str) -> str:
    """What to say after a path that ``save_outputs`` wrote for ``base``: nothing,
    ``(unchanged)``, or which file kept the plain name (``base`` + the path's own suffix, which
    may hold more than the extension: ``_conv1.png``)."""
    if state == "same":
        return " (unchanged)"
    if state == "renamed":
        plain = re.sub(rf"^{re.escape(base)}-\d+", lambda _: base, path.name)
        return f" ({plain} holds a different result)"
    return ""


def report_written(written: list[tuple[Path, str]], what: str, base: str) -> None:
    """Print ``what -> figure.png`` and, below it, ``  + path`` for each file beside it."""
    for path, state in written:
        note = written_note(path, state, base)
        typer.echo(f"{what} -> {path}{note}" if path.suffix == ".png" else f"  + {path}{note}")


def safe(name: str) -> str:
    """A file name made only of letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")


def stem(path: Path) -> str:
    """The file name of ``path`` without its suffix, made safe; ``image`` if nothing is left."""
    return safe(Path(path).stem) or "image"


def csv_bytes(rows: list[dict]) -> bytes:
    """``rows`` as UTF-8 CSV, with every key any row has as a column, in order of first use."""
    buffer = io.StringIO()
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
