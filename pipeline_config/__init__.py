"""One declarative registry of both services' environment variables, and what is derived from it."""
