"""The estimates that bound a chat or an embeddings call before it is sent: what is reserved for it, and what
--confirm-above asks about. No tokenizer makes more tokens than bytes, so the UTF-8 bytes of the input bound
its tokens; whole content parts are counted, images and all."""

from __future__ import annotations

import json

from .gateway.models import ChatRequest, EmbeddingRequest, EstimateRequest

DEFAULT_MAX_TOKENS = 1024
MESSAGE_OVERHEAD_TOKENS = 8  # per chat message, on top of its text, in the reservation bound


def chat_plan(request: ChatRequest) -> EstimateRequest:
    bound_in = sum(len(json.dumps(m.content).encode()) + MESSAGE_OVERHEAD_TOKENS for m in request.messages)
    max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
    return EstimateRequest(model=request.model, modality="chat", input_tokens=bound_in, output_tokens=max_tokens)


def embed_plan(request: EmbeddingRequest) -> EstimateRequest:
    texts = [request.input] if isinstance(request.input, str) else request.input
    return EstimateRequest(model=request.model, modality="embedding", input_tokens=sum(len(t.encode()) for t in texts))
