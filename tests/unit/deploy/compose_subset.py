"""A reader for the YAML subset deploy/compose.yaml is written in (PyYAML is not a dependency).

Block mappings nested by indentation, scalar values (quotes removed), flow collections
``[...]``/``{...}`` kept as their text, block sequences of scalars, ``#`` comments, and
anchors on a mapping (``key: &name``) merged with ``<<: *name``. Anything else is an error,
so a compose file rewritten beyond this subset fails its tests instead of passing unread.
"""

from __future__ import annotations

import re

Node = str | list[str] | dict[str, "Node"]

_LINE = re.compile(r"^(?P<indent> *)(?:(?P<item>- )(?P<scalar>.*)"
                   r"|(?P<key>[A-Za-z0-9_.<-]+):(?: +(?P<value>.*))?)$")


def _strip_comment(text: str) -> str:
    """Drop a trailing ``# comment`` that is outside quotes."""
    quote = ""
    for i, char in enumerate(text):
        if char in "\"'" and quote in ("", char):
            quote = "" if quote else char
        elif char == "#" and not quote and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    return text.rstrip()


def _scalar(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse(text: str) -> dict[str, Node]:
    """The document as nested dicts of strings; merges (``<<: *anchor``) already applied."""
    lines: list[tuple[int, re.Match[str]]] = []
    for raw in text.splitlines():
        if not (stripped := _strip_comment(raw)).strip():
            continue
        if (match := _LINE.match(stripped)) is None:
            raise ValueError(f"outside the supported YAML subset: {raw!r}")
        lines.append((len(match["indent"]), match))
    anchors: dict[str, dict[str, Node]] = {}
    position = 0

    def block(indent: int) -> Node:
        nonlocal position
        mapping: dict[str, Node] = {}
        items: list[str] = []
        while position < len(lines) and lines[position][0] == indent:
            _, match = lines[position]
            position += 1
            if match.group("item"):
                items.append(_scalar(match.group("scalar")))
                continue
            key, value = match.group("key"), match.group("value")
            if key == "<<":
                if not value or not value.startswith("*") or value[1:] not in anchors:
                    raise ValueError(f"merge of an unknown anchor: {value!r}")
                mapping.update(anchors[value[1:]])
            elif value is None or value.startswith("&"):
                nested = position < len(lines) and lines[position][0] > indent
                child = block(lines[position][0]) if nested else {}
                if value:
                    if not isinstance(child, dict):
                        raise ValueError(f"anchor {value} on a non-mapping")
                    anchors[value[1:]] = child
                mapping[key] = child
            else:
                mapping[key] = _scalar(value)
        if position < len(lines) and lines[position][0] > indent:
            raise ValueError(f"unexpected indentation: {lines[position][1].group(0)!r}")
        if mapping and items:
            raise ValueError("a block mixes keys and list items")
        return items if items else mapping

    document = block(0)
    if position != len(lines) or not isinstance(document, dict):
        raise ValueError("the document is not one top-level mapping")
    return document
