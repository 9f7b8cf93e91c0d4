"""Multi-label clothing-attribute recognition with a frozen VGG-16 trunk, as a DVC pipeline."""

from fashiondvc.errors import FashionError

__all__ = ["FashionError"]
__version__ = "0.1.0"
