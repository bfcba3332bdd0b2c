"""What the server tells its operator besides its answers: Prometheus metrics and per-request facts."""

from local_llm.telemetry.metrics import Metrics, RequestRecord
from local_llm.telemetry.requests import RequestMetrics, current_request

__all__ = ["Metrics", "RequestMetrics", "RequestRecord", "current_request"]
