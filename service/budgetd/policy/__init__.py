"""Policies: the YAML language admins write, its loader, resolution and the live registry."""
