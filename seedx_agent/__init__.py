"""seedx-agent: SEED-X re-implemented as a library."""
