"""Expression control: LivePortrait-compatible networks, expression editing and expression transfer.

Math modules here import no ComfyUI code; only ``node.py`` does.
"""
