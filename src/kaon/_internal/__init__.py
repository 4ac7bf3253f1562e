"""Private helpers shared by every layer. Nothing here is public API."""
