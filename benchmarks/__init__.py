"""phaseedge subpackage."""
