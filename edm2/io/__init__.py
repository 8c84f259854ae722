"""File formats: atomic writes, the safetensors snapshot format, official pickles, downloads."""
