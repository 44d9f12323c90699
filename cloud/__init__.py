"""homeedge cloud."""
