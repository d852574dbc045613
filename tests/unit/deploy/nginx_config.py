"""A reader for the nginx configuration syntax deploy/nginx.conf is written in.

Directives are ``name args... ;`` and blocks ``name args... { ... }``; ``#`` starts a comment
and quotes group an argument. Enough to ask which directives apply inside a location,
counting the ones it inherits from its server block (nginx's inheritance for proxy_*).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#]+)""")


@dataclass
class Block:
    """One block (or the file itself): its own directives and the blocks inside it."""

    name: str
    args: tuple[str, ...] = ()
    directives: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    parent: Block | None = None

    def own(self, name: str) -> tuple[str, ...] | None:
        """Arguments of this block's own ``name`` directive (the last one), if any."""
        found = [args for directive, args in self.directives if directive == name]
        return found[-1] if found else None

    def effective(self, name: str) -> tuple[str, ...] | None:
        """The ``name`` directive that applies here: this block's, else the nearest enclosing one's."""
        block: Block | None = self
        while block is not None:
            if (args := block.own(name)) is not None:
                return args
            block = block.parent
        return None

    def walk(self, name: str) -> list[Block]:
        """Every block called ``name`` at any depth below this one."""
        found = [b for b in self.blocks if b.name == name]
        for child in self.blocks:
            found.extend(child.walk(name))
        return found


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read nginx config at {position}: {text[position:position + 20]!r}")
        position = match.end()
        value = next((g for g in match.groups() if g is not None), None)
        if value is not None:
            tokens.append(value)
    return tokens


def parse(text: str) -> Block:
    """The file as nested blocks; unbalanced braces or a directive without ``;`` are errors."""
    root = Block("main")
    current = root
    words: list[str] = []
    for token in _tokens(text):
        if token == ";":
            if not words:
                raise ValueError("empty directive")
            current.directives.append((words[0], tuple(words[1:])))
            words = []
        elif token == "{":
            child = Block(words[0], tuple(words[1:]), parent=current)
            current.blocks.append(child)
            current, words = child, []
        elif token == "}":
            if words or current.parent is None:
                raise ValueError("unbalanced '}' or directive without ';'")
            current = current.parent
        else:
            words.append(token)
    if words or current is not root:
        raise ValueError("unterminated directive or block")
    return root
