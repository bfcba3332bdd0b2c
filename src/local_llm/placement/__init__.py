"""Memory estimates, the device probe and the placement plan."""

from local_llm.placement.estimate import ContextFit, MemoryEstimate, ModelNeed, ServingFacts, estimate_need
from local_llm.placement.plan import Placement, PlacementPlan, PlacementRules, Room, plan_placement
from local_llm.placement.probe import DeviceSnapshot, Footprint, GpuSnapshot, probe_devices

__all__ = [
    "ContextFit",
    "DeviceSnapshot",
    "Footprint",
    "GpuSnapshot",
    "MemoryEstimate",
    "ModelNeed",
    "Placement",
    "PlacementPlan",
    "PlacementRules",
    "Room",
    "ServingFacts",
    "estimate_need",
    "plan_placement",
    "probe_devices",
]
