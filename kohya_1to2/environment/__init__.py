"""Set-up and the machine: the pinned sd-scripts (vendor), the environment probe behind `doctor`, the tiny model."""
