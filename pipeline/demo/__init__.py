"""The embedded demo region: a seeded synthetic mountain region published as COGs and
Planetary-Computer-shaped STAC items, served by a local STAC API (``rustac serve``).

Not real data: it exists so that the whole pipeline runs offline through the same code
path as Planetary Computer.
"""

from pipeline.demo.generate import DemoLayout, ensure_demo_data
from pipeline.demo.server import LocalStacServer

__all__ = ["DemoLayout", "LocalStacServer", "ensure_demo_data"]
