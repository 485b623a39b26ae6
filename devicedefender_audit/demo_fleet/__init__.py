"""Key material for the embedded demo fleet (real test keys; see demo.py)."""
