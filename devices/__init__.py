"""homeedge devices."""
