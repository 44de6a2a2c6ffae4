"""twinlm: your chat history and documents, turned into a private fine-tuned LLM."""

__version__ = "0.1.0"
