"""What a chat or embeddings call may cost at most, and what its reservation is settled at.

The reservation is sent as `max_credits`, so it must bound every token the gateway may bill: every field of
every message we forward (the text, tool calls and their arguments, tool results, names), and each image at
the most any model charges for one image (its bytes say nothing of its pixels, so they are not counted). No
tokenizer makes more tokens than UTF-8 bytes, so the bytes of a message's JSON bound its tokens.

Settlement: a charge we price from the usage never exceeds the hold the gateway was sent as `max_credits`
(the gateway promised no more). A charge the gateway itself states is the truth even above the hold: the
ledger records it in full, with an `overcharge` event in the audit trail, and an error is logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from .gateway import GatewayClient, GatewayError
from .gateway.models import MAX_CREDITS, ChatCompletion, ChatMessage, EmbeddingList, EstimateRequest
from .paid import BadAnswerError

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 8  # per chat message (role markers, separators), on top of its fields
# The most tokens one input image costs on any model we know of (GPT-4o high detail ~1,450, the patch-based
# OpenAI models ~2,500 with their multiplier, Claude ~1,600 at 1.15 MP, Gemini 258 per tile), with margin.
IMAGE_TOKEN_BOUND = 6_000
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})


def chat_input_bound(messages: Sequence[ChatMessage]) -> int:
    """An upper bound of the input tokens of `messages`: every byte we forward, each image at its most."""
    return sum(_message_bound(message) + MESSAGE_OVERHEAD_TOKENS for message in messages)


def _message_bound(message: ChatMessage) -> int:
    fields = message.model_dump(mode="json", exclude_none=True)  # role, content and every extra (tool_calls...)
    images = 0
    content = fields.get("content")
    if isinstance(content, list):
        kept = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES:
                images += 1  # counted at the bound, whatever its URL's or data's length
            else:
                kept.append(part)
        fields["content"] = kept
    return len(json.dumps(fields, ensure_ascii=False).encode()) + images * IMAGE_TOKEN_BOUND


def embedding_input_bound(texts: Sequence[str]) -> int:
    """An upper bound of the tokens of `texts`: no tokenizer gives more tokens than bytes."""
    return sum(len(text.encode()) for text in texts)


def priced_charge(priced: int, held: int) -> int:
    """A charge we priced from the usage: never above the hold the gateway was sent as max_credits."""
    if priced > held:
        log.warning(
            "the usage prices at %d credits, over the %d sent as max_credits: settling at %d", priced, held, held
        )
        return held
    return priced


async def settled_charge(
    client: GatewayClient, answer: ChatCompletion | EmbeddingList, plan: EstimateRequest, held: int
) -> int:
    """The real charge: as the gateway states it (even above the hold: the ledger records an overcharge), else
    priced from the usage but never above the hold sent as max_credits, else the whole hold."""
    stated = (answer.model_extra or {}).get("credits")
    if isinstance(stated, int | float) and not isinstance(stated, bool):
        if not 0 <= stated <= MAX_CREDITS:  # inf, nan, negative or absurd: not a charge we can count
            raise BadAnswerError(f"the gateway stated a charge of {stated!r} credits")
        return int(-(-stated // 1))
    if answer.usage is None:
        return held
    used = plan.model_copy(
        update={"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens}
    )
    try:
        return priced_charge((await client.estimate(used)).credits, held)
    except GatewayError:
        return held
