"""Batch mode: the provider batch APIs (OpenAI Batch, Anthropic Message Batches) behind one
contract (``contract.BatchAPI``), durable state (``journal``), and the runner (``runner``)."""

from .contract import BatchAPI, BatchInfo, LineResult, batch_api_of

__all__ = ["BatchAPI", "BatchInfo", "LineResult", "batch_api_of"]
