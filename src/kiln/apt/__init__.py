"""apt, as kiln reads it: sources lists, Release files and Packages indexes, and Debian
version order. Ground only below it; bake, lifecycle and app use it."""
