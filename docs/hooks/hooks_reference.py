"""mkdocs hook: replace ``<!-- rxf-hooks-reference -->`` by one section per hook of
:mod:`rxf.hookspecs` (signature, call rule, docstring), so the plugin reference is generated
from the hook specifications at every build.

Example:
    >>> "### `rxf_find_embedding`" in render()
    True
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from rxf import hookspecs

MARKER = re.compile(r"<!--\s*rxf-hooks-reference\s*-->")
_ROLE = re.compile(r":(?:func|class|mod|data):`([^`]+)`")


def hook_names() -> list[str]:
    """The hook specifications' names, in source order."""
    members = [
        (f.__code__.co_firstlineno, n)
        for n, f in vars(hookspecs).items()
        if n.startswith("rxf_") and inspect.isfunction(f)
    ]
    return [name for _, name in sorted(members)]


def signature(name: str) -> str:
    """``name(arg, ...) -> return`` as written in the specification."""
    fn = getattr(hookspecs, name)
    params = ", ".join(inspect.signature(fn).parameters)
    returns = fn.__annotations__.get("return", "")
    return f"{name}({params}) -> {returns}"


def _markdown(doc: str) -> str:
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", inspect.cleandoc(doc).replace("``", "`"))
    prose, _, args = text.partition("\nArgs:\n")
    items: list[str] = []
    for line in args.splitlines():
        if line.startswith("        ") and items:
            items[-1] += " " + line.strip()
        elif line.strip():
            name, _, meaning = line.strip().partition(": ")
            items.append(f"- `{name}`: {meaning}")
    return prose.strip() + ("\n\nArguments:\n\n" + "\n".join(items) if items else "")


def render() -> str:
    """The sections for every hook."""
    parts = []
    for name in hook_names():
        fn = getattr(hookspecs, name)
        first = getattr(fn, hookspecs.PROJECT + "_spec", {}).get("firstresult", False)
        rule = (
            "First non-`None` result wins (most recently registered plugin first; `trylast` "
            "implementations, such as the defaults, last)."
            if first
            else "Every plugin's result is collected."
        )
        parts.append(f"### `{name}`\n\n`{signature(name)}`: {rule}\n\n{_markdown(fn.__doc__)}\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    return MARKER.sub(lambda match: render(), markdown)
