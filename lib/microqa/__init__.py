"""microqa: a reproducible study of DoITPoMS micrographs with CLIP and vision-language models."""

__version__ = "0.1.0"
