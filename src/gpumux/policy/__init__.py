"""Switch policies: pure functions from a scheduler snapshot to decisions (design §5)."""
