"""Where a base image's root comes from: Debian (mmdebstrap), an import, or nothing."""
