"""Analysis scripts over the fw-screen database (importable, and runnable as scripts)."""
