"""Composite dataset: scan -> pre-flight -> pairing -> captions -> compose -> build."""
