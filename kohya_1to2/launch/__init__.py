"""Launching sd-scripts: argv building (pure), running, doctor, set-up."""
