"""VLM question answering: questions and prompts, strict parsing, backends, answer cache."""
