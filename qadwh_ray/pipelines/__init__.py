"""Pipelines that chain the Ray stages: the main job (train → evaluate → index →
serve) and the nightly re-index (retrain → re-index → verify → publish → swap)."""
