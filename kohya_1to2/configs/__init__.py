"""Stage configs: presets -> render (pure) -> merge with hand edits -> lint."""
