"""Placeholder until this module lands."""

NODES: list = []
