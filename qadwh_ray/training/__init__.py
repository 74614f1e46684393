"""Training logic shared by the local trainer and Ray Train: config, data parts, methods, objective, step (no Ray)."""
