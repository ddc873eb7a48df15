"""Dataset tools: preparation, captioning, the tag editor and the doctor (all behind lorasmith.api)."""
