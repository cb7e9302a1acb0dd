"""`serve`: one model behind the OpenAI chat-completions API. types (what the
parts hand each other), request (a body -> a checked ChatRequest), media
(where a request's images and videos come from), engine (the model, the
queue in front of it, a request's session and answer), http_handler (routes,
keys, limits, JSON and server-sent events), app (start and stop)."""

from .app import ServerConfig, serve

__all__ = ["ServerConfig", "serve"]
