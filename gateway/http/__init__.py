"""The HTTP/JSON and OpenAI-compatible API: a thin adapter over the gRPC server's Engines.

Same engines (one per served model), admission slots, limits, auth, TLS and metrics as gRPC
(README, "HTTP and OpenAI"); ``convert`` and ``openai`` translate JSON, ``app`` routes and
observes, ``server`` listens.
"""
