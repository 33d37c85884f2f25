"""The shape of chat input (vLLM's ``messages``), checked once at parse time.

The served models are text-only, so a message's content is a string or a list of ``text``
parts; an image, audio or video part is refused here with its exact path, rather than being
dropped by the chat template and answered as if the caller had sent text alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

Fail = Callable[[str, str], NoReturn]


def check_conversations(conversations: list, field: str, max_items: int, fail: Fail) -> None:
    """Every conversation a non-empty list of messages, every message text-only."""
    if len(conversations) > max_items:
        fail(field, f"{field} has {len(conversations)} conversations, more than the limit of {max_items}")
    for c, conversation in enumerate(conversations):
        where = f"{field}[{c}]" if len(conversations) > 1 else field
        if not isinstance(conversation, list) or not conversation:
            fail(where, f"{where} must be a non-empty list of messages")
        for m, message in enumerate(conversation):
            check_message(message, f"{where}[{m}]", fail)


def check_message(message: Any, where: str, fail: Fail) -> None:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        fail(where, f"{where} must be a message: an object with a string 'role'")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        fail(f"{where}.content", f"{where}.content must be a string or a list of content parts")
    for p, part in enumerate(content):
        at = f"{where}.content[{p}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            fail(at, f"{at}: content of type {kind!r} is not supported; the served models are text-only, so only 'text' parts are")
        if not isinstance(part.get("text"), str):
            fail(at, f"{at}.text must be a string")


__all__ = ["check_conversations", "check_message"]
