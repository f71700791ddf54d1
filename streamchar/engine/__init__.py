"""The real-time engine: sessions that turn text (or speech) into a talking character, chunk by chunk."""
