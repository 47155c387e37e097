"""The launcher daemon's parts: wiring, statistics, signals."""
