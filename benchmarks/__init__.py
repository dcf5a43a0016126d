"""Side-by-side benchmarks of rlhf's stages against TRL's (see benchmarks/README.md)."""
