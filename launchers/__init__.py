"""Hydra launcher profiles (YAML under hydra/launcher/), on Hydra's search path as pkg://launchers."""
