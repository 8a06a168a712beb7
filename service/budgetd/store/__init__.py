"""The store seam: one interface between the engine and Redis, two ways to run it."""
