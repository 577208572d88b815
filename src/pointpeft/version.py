"""The installed pointpeft version (one place, read by the package, the CLI and the adapter files)."""

__version__ = "0.1.0.dev0"
