"""Training and evaluation logic shared by the local trainer and Ray Train (no Ray here)."""
