"""Visage node families. Sub-packages hold the maths (no ComfyUI imports) and one ``node.py`` each."""
