"""local-llm-interface: an OpenAI-compatible server for your own models on your own machine."""

__version__ = "0.1.0"
