"""Metrics, protocols, reports and plots; and the teacher's sample inspection."""
