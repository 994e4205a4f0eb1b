"""mkdocs hook: replace ``<!-- rxf-config-reference: package.module.Class -->`` by the
tables of that pydantic model's fields (``rxf.cli.reference.render``), so the reference is
generated from the code at every build. Works offline; no plugin to install."""

from __future__ import annotations

import re
from typing import Any

from rxf.cli.reference import render

MARKER = re.compile(r"<!--\s*rxf-config-reference:\s*([\w.]+)\s*-->")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    seen: set[type] = set()  # each model once per page
    return MARKER.sub(lambda match: render(match.group(1), seen), markdown)
