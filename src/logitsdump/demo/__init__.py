"""The embedded default: a tiny Llama, sample datasets and YAML files, and the end-to-end demo."""
