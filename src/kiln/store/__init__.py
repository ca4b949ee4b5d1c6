"""The content-addressed store: an OCI image layout plus each layer unpacked once."""
