"""Scheduled work: expiry sweep, event delivery, forecasts, spikes, period close."""
