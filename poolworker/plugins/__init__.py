"""IO processor plugins: custom request parsing and response shaping around a pooling model."""
