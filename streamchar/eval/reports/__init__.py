"""Reports: the JSON records, Markdown tables and plots each evaluation protocol writes, kept apart from what
the protocols measure."""
