"""The HTTP/WebSocket app (``streamchar serve``), its wire format and the browser page."""
