"""The three HTTP surfaces: public API, ML node callbacks, admin API."""
