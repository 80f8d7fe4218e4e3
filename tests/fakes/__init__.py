"""Stand-ins for what cannot run here: the LLM (an OpenAI-compatible HTTP server) and the GPU
trainer (a subclass of ART's Backend). Both behave like the real thing at the interface."""
