"""gpumux: many LLMs, few GPUs — one OpenAI endpoint in front of vLLM backends that take turns."""

__version__ = "0.1.0"
