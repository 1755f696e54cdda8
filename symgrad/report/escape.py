"""Text made safe for a terminal, markdown prose and inline code (shared by every renderer)."""

from __future__ import annotations

__all__ = ["escape_markdown", "markdown_code", "escape_text"]

_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|~>")


def escape_markdown(text: str) -> str:
    """``text`` (a title, an input name, a closed form) as literal markdown prose or a table cell:
    markdown punctuation backslash-escaped, ``<``/``>``/``&`` as entities (GitHub renders raw
    HTML), line breaks as spaces (a newline would end a table row), control characters as ``\\xNN``."""
    out = []
    for ch in escape_text(str(text)).replace("\n", " "):
        if ch in "<>&":
            out.append({"<": "&lt;", ">": "&gt;", "&": "&amp;"}[ch])
        elif ch in _MARKDOWN_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def markdown_code(text: str) -> str:
    """``text`` as an inline code span that no backtick inside it can close early."""
    import re

    text = escape_text(str(text)).replace("\n", " ")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def escape_text(text: str) -> str:
    """``text`` for a terminal: control characters (ANSI escape sequences, carriage returns,
    bells) shown as ``\\xNN`` instead of acting on the terminal; newlines and tabs kept."""
    return "".join(ch if ch in "\n\t" or (ord(ch) >= 32 and ord(ch) != 127 and not 0x80 <= ord(ch) < 0xA0)
                   else f"\\x{ord(ch):02x}" for ch in str(text))
