"""STOW-RS: the upload body parsed as it streams in, instances checked, outcomes reported."""
