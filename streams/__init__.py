"""Faust wiring of the streaming learner (agents, tables, topics) and the CLI."""
