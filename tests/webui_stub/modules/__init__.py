"""Test stand-in for the webui's `modules` package (see ../README.md)."""
