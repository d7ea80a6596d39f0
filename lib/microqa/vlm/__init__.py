"""VLM question answering: questions and prompts, strict parsing, backends, answer cache.

Kept light on purpose (no torch): `from microqa.vlm import parse_choice` is cheap, and the
OpenAI-compatible path never imports transformers.
"""

from microqa.vlm.parsing import keyword_recall, map_description, parse_choice

__all__ = ["keyword_recall", "map_description", "parse_choice"]
