"""The demo model's tooling: synthetic phantoms, training and evaluation (NOT FOR CLINICAL USE)."""
