"""MkDocs hook: the CLI reference, generated from the Typer app at build time.

``docs/reference/cli.md`` holds the marker below; this hook replaces it with the Markdown that
Typer's own generator (``typer deconvnet.cli.main utils docs``) writes for ``deconvnet.cli.app``,
in process, so every option and its help text come from the code. Any failure fails the build.
"""

from __future__ import annotations

import typer
from typer.cli import get_docs_for_click

MARKER = "<!-- deconvnet-cli-reference -->"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    from deconvnet.cli import app

    command = typer.main.get_command(app)
    context = typer.Context(command, info_name="deconvnet")
    # indent=1: the app's own heading is a level-2 heading under the page's title.
    reference = get_docs_for_click(obj=command, ctx=context, indent=1, name="deconvnet")
    return markdown.replace(MARKER, reference)
