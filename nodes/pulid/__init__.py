"""PuLID family (Flux and SDXL): identity encoders, released-file loaders, the Flux identity patch.

Maths only so far (no ``node.py``; registered nowhere). Math modules here import no ComfyUI code.
"""
