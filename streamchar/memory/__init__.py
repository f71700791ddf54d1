"""Window memory: the window layout, the per-layer context K/V cache and streaming state."""
