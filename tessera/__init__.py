"""Tessera: an LLM inference engine and OpenAI-compatible server.

Offline use: `from tessera import LLM, SamplingParams`.
"""
from tessera.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "__version__"]
__version__ = "0.1.0"


def __getattr__(name):  # LLM pulls in torch and the models: import it only when asked
    if name == "LLM":
        from tessera.llm import LLM
        return LLM
    raise AttributeError(name)
