"""HTTP: thin Litestar handlers over the engine. Knows HTTP, never Redis."""
