"""Chat templates: put a text through a tokenizer's chat template, and know where the text
lies in what the model reads.

An instruct model was tuned on conversations rendered by its chat template; raw text puts
it somewhere it rarely was. ``chat`` says what the text is in the conversation:

- ``None``: raw text, no template (the default);
- ``"user"``: the text is the user's message; the assistant's turn is opened after it
  (the generation prompt), so the model is about to answer it;
- ``"assistant"``: the text is the assistant's reply to an empty user turn (or to ``user``),
  left open (no end-of-turn token after it): the text is what the model is saying, and a
  continuation goes on with the same reply.

``system`` adds a system prompt. A template that refuses a system role (Gemma 2, for
example) gets it folded into the user turn as ``system + "\\n\\n" + message``; the
provenance says which (``system_role``).

The template is rendered once per setting with a placeholder in the message, which gives
the text before and after it (``prefix``, ``suffix``); every text is then
``prefix + text + suffix``, placed exactly as given, so character offsets into the text
(the emotion word) are offsets into the templated string shifted by ``len(prefix)``. The
templated string is tokenised with ``add_special_tokens=False`` (the template writes its
own BOS), as ``apply_chat_template`` does.

>>> fmt = chat_format(lm, "user", system="Be brief.")  # doctest: +SKIP
>>> fmt.wrap("Thanks a lot!")  # ChatML (SmolLM2)  # doctest: +SKIP
'<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nThanks a lot!<|im_end|>\\n<|im...'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emocircuits.errors import CaptureError, ModelError

if TYPE_CHECKING:
    from emocircuits.models.loading import LoadedModel

CHAT_MODES = ("user", "assistant")
"""The values of ``chat`` besides ``None`` (raw text)."""

FOLDED = "folded into the user turn"
_PLACEHOLDER = "\ue000emocircuits-text\ue001"  # private-use characters: no template touches them


def check_chat(chat: str | None, system: str | None = None) -> None:
    """Refuse a ``chat`` value other than None, ``"user"``, ``"assistant"``, and a system
    prompt without a chat mode (needs no model: commands call it before loading one).

    >>> check_chat("user", "Be brief.")
    >>> check_chat("bot")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    emocircuits.errors.CaptureError: unknown chat mode 'bot'; choose None (raw text), ...
    """
    if chat is not None and chat not in CHAT_MODES:
        raise CaptureError(
            f"unknown chat mode {chat!r}; choose None (raw text), 'user' or 'assistant'"
        )
    if system is not None and chat is None:
        raise CaptureError("a system prompt needs a chat mode (chat='user' or 'assistant')")


@dataclass(frozen=True)
class ChatFormat:
    """How every text of a run is put through the chat template: ``prefix + text + suffix``."""

    chat: str
    system: str | None
    user: str | None  # assistant mode: the user turn the text answers (None: empty)
    prefix: str
    suffix: str
    system_role: str | None  # "system", FOLDED, or None without a system prompt
    template_sha256: str

    def wrap(self, text: str) -> str:
        """The templated string of ``text``."""
        return self.prefix + text + self.suffix

    def span(self, text: str) -> tuple[int, int]:
        """Character span of ``text`` in :meth:`wrap` ``(text)``."""
        return len(self.prefix), len(self.prefix) + len(text)

    def encode(self, tokenizer: Any, text: str) -> tuple[list[int], list[bool]]:
        """Token ids of the templated ``text`` and, per token, whether it is one of the
        text's own tokens (it overlaps the text's characters) rather than the template's."""
        try:
            enc = tokenizer(self.wrap(text), add_special_tokens=False,
                            return_offsets_mapping=True)  # fmt: skip
        except NotImplementedError:
            raise CaptureError(
                "this tokenizer gives no character offsets (a 'fast' tokenizer is needed)"
            ) from None
        lo, hi = self.span(text)
        own = [e > s and s < hi and e > lo for s, e in enc["offset_mapping"]]
        return list(enc["input_ids"]), own

    def provenance(self) -> dict[str, Any]:
        """What the outputs record: the mode, the system prompt and how it was placed, the
        template's sha256, and the text around the message."""
        return {"chat": self.chat, "system": self.system, "system_role": self.system_role,
                "user": self.user, "template_sha256": self.template_sha256,
                "prefix": self.prefix, "suffix": self.suffix}  # fmt: skip


def template_sha256(tokenizer: Any) -> str | None:
    """sha256 of the tokenizer's chat template (None without one)."""
    t = getattr(tokenizer, "chat_template", None)
    if not t:
        return None
    return hashlib.sha256(str(t).encode("utf-8")).hexdigest()


def chat_format(
    lm: LoadedModel, chat: str | None, system: str | None = None, *, user: str | None = None
) -> ChatFormat | None:
    """The :class:`ChatFormat` of ``chat`` (``"user"`` / ``"assistant"``) and ``system`` on
    ``lm``'s tokenizer, or None for raw text (``chat=None``). ``user``: in assistant mode,
    the user turn the text answers (default empty). One clear error for a bad value, a
    tokenizer without a chat template, or a template that cannot render the turns.

    >>> chat_format(lm, None) is None  # doctest: +SKIP
    True
    >>> chat_format(lm, "assistant").suffix  # doctest: +SKIP
    ''
    """
    check_chat(chat, system)
    if chat is None:
        return None
    tok = lm.tokenizer
    sha = template_sha256(tok)
    if sha is None:
        raise ModelError(
            f"chat={chat!r} needs a chat template, and the tokenizer of {lm.name} has none "
            "(a base model?); leave chat unset for raw text"
        )
    role = None if system is None else "system"
    try:
        prefix, suffix = _render(tok, chat, system, user, fold=False)
    except _RenderError as e:
        if system is None:
            raise ModelError(f"the chat template of {lm.name} cannot render {e}") from None
        try:  # a template without a system role: the system prompt opens the user turn
            prefix, suffix = _render(tok, chat, system, user, fold=True)
        except _RenderError as e2:
            raise ModelError(f"the chat template of {lm.name} cannot render {e2}") from None
        role = FOLDED
    return ChatFormat(chat, system, user, prefix, suffix, role, sha)


class _RenderError(Exception):
    pass


def _render(tok: Any, chat: str, system: str | None, user: str | None, *, fold: bool):
    """``(prefix, suffix)`` around the message, from one rendering with a placeholder."""
    msgs: list[dict[str, str]] = []
    if system is not None and not fold:
        msgs.append({"role": "system", "content": system})
    lead = f"{system}\n\n" if system is not None and fold else ""
    if chat == "user":
        msgs.append({"role": "user", "content": lead + _PLACEHOLDER})
    else:
        msgs += [{"role": "user", "content": lead + (user or "")},
                 {"role": "assistant", "content": _PLACEHOLDER}]  # fmt: skip
    what = "a user turn" if chat == "user" else "an assistant turn after a user turn"
    if system is not None:
        what += " with a system prompt" + (" in the user turn" if fold else "")
    try:
        out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=chat == "user")
    except Exception as e:  # jinja's TemplateError, raise_exception(...) in the template
        raise _RenderError(f"{what} ({type(e).__name__}: {e})") from None
    if not isinstance(out, str) or out.count(_PLACEHOLDER) != 1:
        raise _RenderError(f"{what} (the message does not appear once, as given)")
    prefix, suffix = out.split(_PLACEHOLDER)
    if lead and lead not in prefix:
        raise _RenderError(f"{what} (the system prompt does not appear)")
    # assistant: the reply is left open, the model is in the middle of saying the text
    return prefix, suffix if chat == "user" else ""


__all__ = ["CHAT_MODES", "ChatFormat", "chat_format", "check_chat", "template_sha256"]
