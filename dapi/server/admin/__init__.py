"""admin HTTP app."""
