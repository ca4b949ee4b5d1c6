"""kiln: machine images as build artefacts of configuration code."""

__version__ = "0.1.0"
