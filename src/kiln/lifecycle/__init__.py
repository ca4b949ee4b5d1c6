"""An image's life after its bake: channels and their gates, revocation, signatures and
trust, retention; all of it recorded in the catalog."""
