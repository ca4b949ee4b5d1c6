"""kiln's use cases: what the CLI (and a server) call. Each takes a Workspace, the store and
catalog this process opened once, and returns plain data for the caller to render."""
