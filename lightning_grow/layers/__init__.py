"""What the package knows about each layer type, in one place per type."""
