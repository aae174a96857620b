"""HTML text and links for the gallery's static pages: escaped, and relative, so that a gallery
opens from ``file://`` wherever its folder is moved."""

from __future__ import annotations

import html
import os
import urllib.parse
from pathlib import Path


def text(value: object) -> str:
    """HTML text for any value; file names with undecodable bytes show a replacement mark."""
    decoded = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(decoded, quote=True)


def href(target: str | os.PathLike[str], page_dir: Path) -> str:
    """A relative link from a page in ``page_dir`` to the file ``target``, quoted and escaped."""
    try:
        relative = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))
    except ValueError:  # another drive on Windows
        return text(Path(os.path.abspath(target)).as_uri())
    quoted = urllib.parse.quote(Path(relative).as_posix(), errors="surrogateescape")
    return html.escape(quoted, quote=True)
