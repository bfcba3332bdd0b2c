"""Memory estimates, the device probe and the placement plan."""

from local_llm.placement.plan import (
    DeviceBudget,
    Placement,
    PlacementPlan,
    estimate_bytes,
    plan_placement,
    probe_devices,
)

__all__ = ["DeviceBudget", "Placement", "PlacementPlan", "estimate_bytes", "plan_placement", "probe_devices"]
