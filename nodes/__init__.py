"""Seedream nodes for ComfyUI through CometAPI. Relative imports only: ComfyUI has its own
top-level `nodes` module."""

from .seedream import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
