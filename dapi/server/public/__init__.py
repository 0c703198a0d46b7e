"""public HTTP app."""
