"""The HTTP/JSON and OpenAI-compatible API: a thin adapter over the gRPC server's Engine.

Same engine, admission slots, limits, auth, TLS and metrics as gRPC (README, "HTTP and OpenAI");
``convert`` and ``openai`` translate JSON, ``app`` routes and observes, ``server`` listens.
"""
