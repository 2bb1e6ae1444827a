"""The Orpheus model itself: its spec, the Llama transformer and its attention kernel, the tiny test model."""
