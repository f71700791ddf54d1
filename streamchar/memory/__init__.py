"""Window memory: the window layout, what a session remembers (sink chunk, motion frames), the per-layer
context K/V cache and streaming state."""
