"""The miniature SEED-X: its procedural world (``world``), the deterministic evaluator (``evaluate``)."""
