"""Landmark Tagger: recognise famous landmarks in photos and turn them into tags."""

__version__ = "0.1.0"
