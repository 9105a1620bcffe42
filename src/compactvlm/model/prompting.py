"""Text side: chat template, ``<image>`` placeholder expansion, and answer-only labels.

The placeholder ``<image>`` in a message is expanded to exactly ``num_image_tokens`` positions holding the
sentinel id ``IMAGE_TOKEN_ID`` (-200, as in the original LLaVA code); the model replaces those positions with the
compressor's output and checks the count. No token is added to the vocabulary.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import CompactVLMError

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_ID = -200
IGNORE_INDEX = -100

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def to_messages(conversations: Sequence[dict], system_prompt: str | None = None) -> list[dict]:
    """LLaVA ``[{"from": "human", "value": ...}, ...]`` -> chat messages; validates roles and content."""
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise CompactVLMError("a conversation must be a non-empty list of turns", 'use [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]')
    msgs: list[dict] = []
    if system_prompt is not None:
        msgs.append({"role": "system", "content": system_prompt})
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise CompactVLMError(f"turn {i} of the conversation is not an object: {turn!r}", 'each turn is {"from": ..., "value": ...}')
        who = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if who not in _ROLES:
            raise CompactVLMError(f"turn {i} has unknown speaker {who!r}", "use 'human' or 'gpt' (or 'user'/'assistant')")
        if not isinstance(text, str):
            raise CompactVLMError(f"turn {i} has no text value", 'give each turn a string "value"')
        msgs.append({"role": _ROLES[who], "content": text})
    return msgs


def _encode_text(tokenizer, text: str, num_image_tokens: int) -> list[int]:
    ids: list[int] = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            ids.extend([IMAGE_TOKEN_ID] * num_image_tokens)
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def build_prompt(tokenizer, question: str, num_image_tokens: int, system_prompt: str | None = None,
                 with_image: bool = True) -> list[int]:
    """Token ids of a one-turn user prompt ending with the assistant header (generation prompt)."""
    if not isinstance(question, str) or not question.strip():
        raise CompactVLMError("the question is empty", "ask a question, e.g. --question 'What is in the image?'")
    content = question
    if with_image and IMAGE_PLACEHOLDER not in content:
        content = f"{IMAGE_PLACEHOLDER}\n{content}"
    msgs = ([] if system_prompt is None else [{"role": "system", "content": system_prompt}])
    msgs.append({"role": "user", "content": content})
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return _encode_text(tokenizer, text, num_image_tokens)


def build_training_example(tokenizer, conversations: Sequence[dict], num_image_tokens: int,
                           system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for a LLaVA conversation; labels are IGNORE_INDEX except the assistant replies
    (including their end-of-turn token), so the loss is on answer tokens only."""
    msgs = to_messages(conversations, system_prompt)
    n_img = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in msgs)
    if n_img > 1:
        raise CompactVLMError(f"conversation has {n_img} <image> placeholders", "use at most one image per sample")
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            prefix = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
            if not full.startswith(prefix) or not prefix.startswith(rendered):
                raise CompactVLMError("the tokenizer's chat template is not prefix-stable", "use a chat template that renders turns incrementally")
            seg = _encode_text(tokenizer, prefix[len(rendered):], num_image_tokens)
            ids += seg
            labels += [IGNORE_INDEX] * len(seg)
            answer = full[len(prefix):]
            # keep the end-of-turn marker in the label, drop trailing whitespace the template adds after it
            seg = _encode_text(tokenizer, answer.rstrip("\n"), num_image_tokens)
            ids += seg
            labels += seg
            tail = answer[len(answer.rstrip("\n")):]
            if tail:
                seg = _encode_text(tokenizer, tail, num_image_tokens)
                ids += seg
                labels += [IGNORE_INDEX] * len(seg)
            rendered = full
    if not any(l != IGNORE_INDEX for l in labels):
        raise CompactVLMError("conversation has no assistant ('gpt') turn to learn from", "add a gpt answer turn")
    if IMAGE_TOKEN_ID in labels:
        raise CompactVLMError("an <image> placeholder appears in an answer", "put <image> in the human turn")
    return ids, labels
