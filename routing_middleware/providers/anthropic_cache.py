"""Prompt-cache breakpoints (``cache_control`` on blocks) carried through a request.

The normalized schema has no place for Anthropic's per-block ``cache_control``;
dropping it would silently turn cached prompts into full-price ones. The caller
side records each marker with where its block lands in the upstream body, under
``ChatRequest.extra["anthropic_cache_control"]``; the upstream encoder puts them
back. A marker whose place no longer holds a block of the same type (the
request was changed on the way, or the caller sent consecutive same-role turns
that were merged) is left out rather than put on the wrong block.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["CACHE_MARKERS_KEY", "apply_cache_markers", "cache_markers"]

CACHE_MARKERS_KEY = "anthropic_cache_control"


def _upstream_order(role: Any, content: list[Any]) -> Iterable[Any]:
    """A turn's blocks in the order the upstream encoder writes them."""
    kinds = (
        (("tool_result",), ("text", "image"))
        if role == "user"
        else (("text",), ("tool_use",))  # thinking blocks are not sent upstream
    )
    for group in kinds:
        yield from (b for b in content if isinstance(b, dict) and b.get("type") in group)


def cache_markers(data: dict[str, Any]) -> dict[str, Any] | None:
    """The markers in a raw Messages request body, or ``None`` when it has none."""
    marks: list[dict[str, Any]] = []

    def mark(block: Any, at: list[Any]) -> None:
        control = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(control, dict):
            marks.append({"at": at, "type": block.get("type"), "cache_control": control})

    system = data.get("system")
    if isinstance(system, list):
        for j, block in enumerate(system):
            mark(block, ["system", j])
    messages = data.get("messages") or []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(_upstream_order(message.get("role"), content)):
            mark(block, ["messages", i, "content", j])
            inner = block.get("content") if block.get("type") == "tool_result" else None
            for k, part in enumerate(inner if isinstance(inner, list) else ()):
                mark(part, ["messages", i, "content", j, "content", k])
    for tool in data.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type") in (None, "custom"):
            mark(tool, ["tools", tool.get("name")])
    return {"messages": len(messages), "marks": marks} if marks else None


def apply_cache_markers(body: dict[str, Any], spec: Any, shift: int) -> None:
    """Put recorded markers back on ``body``; ``shift`` counts turns inserted in front."""
    if not isinstance(spec, dict) or not isinstance(spec.get("marks"), list):
        return
    same_turns = spec.get("messages") == len(body["messages"]) - shift
    for marker in spec["marks"]:
        at = marker.get("at") if isinstance(marker, dict) else None
        control = marker.get("cache_control") if isinstance(marker, dict) else None
        if not isinstance(at, list) or not at or not isinstance(control, dict):
            continue
        target: Any = None
        if at[0] == "tools" and len(at) == 2:
            named = (t for t in body.get("tools", ()) if "input_schema" in t and t["name"] == at[1])
            target = next(named, None)
        elif at[0] == "system" and isinstance(body.get("system"), list):
            target = _walk(body["system"], at[1:])
        elif at[0] == "messages" and same_turns and len(at) > 1 and isinstance(at[1], int):
            target = _walk(body["messages"], [at[1] + shift, *at[2:]])
        if isinstance(target, dict) and target.get("type") == marker.get("type"):
            target["cache_control"] = control


def _walk(node: Any, path: list[Any]) -> Any:
    for step in path:
        if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        elif isinstance(node, dict) and isinstance(step, str):
            node = node.get(step)
        else:
            return None
    return node
