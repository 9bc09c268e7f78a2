"""Entry point for `mitmdump -s addons/script.py` (what `schoolgate run` starts)."""

from schoolgate.addons.gateway import SchoolGate

addons = [SchoolGate()]
