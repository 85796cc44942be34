"""Command-line front end and the end-to-end demo. The library lives in the stage packages."""
