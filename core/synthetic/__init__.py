"""Procedural collections made by the project's own code: art styles, procedural images and
dead leaves."""
