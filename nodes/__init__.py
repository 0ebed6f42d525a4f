"""Seedream nodes for ComfyUI through CometAPI. Relative imports only: ComfyUI has its own
top-level `nodes` module."""

from .host import add_server_routes
from .routes import add_routes
from .seedream import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

add_server_routes(add_routes)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
