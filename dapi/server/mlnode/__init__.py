"""mlnode HTTP app."""
