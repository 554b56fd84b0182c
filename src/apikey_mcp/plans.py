"""The estimates that bound a chat or an embeddings call before it is sent: what is reserved for it, and what
--confirm-above asks about. The bounds themselves (every byte we forward, images at their most) are in
charges.py."""

from __future__ import annotations

from .charges import chat_input_bound, embedding_input_bound
from .gateway.models import ChatRequest, EmbeddingRequest, EstimateRequest

DEFAULT_MAX_TOKENS = 1024


def chat_plan(request: ChatRequest) -> EstimateRequest:
    max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
    bound_in = chat_input_bound(request.messages)
    return EstimateRequest(model=request.model, modality="chat", input_tokens=bound_in, output_tokens=max_tokens)


def embed_plan(request: EmbeddingRequest) -> EstimateRequest:
    texts = [request.input] if isinstance(request.input, str) else request.input
    return EstimateRequest(model=request.model, modality="embedding", input_tokens=embedding_input_bound(texts))
