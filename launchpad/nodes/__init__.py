"""Node types: what a program is made of."""
