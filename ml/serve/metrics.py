"""The prediction service's Prometheus metrics, in a registry of their own (``GET /metrics``)."""

from __future__ import annotations

from collections import Counter

#: Request latency buckets (seconds): a 32 px model answers in about a millisecond, a 224 px batch in a second.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """Requests, errors, latency, predictions per version and class, model swaps and the prediction log's health."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ct_serve_requests", "Prediction requests answered, by HTTP status", ["status"], registry=r
        )
        self.errors = Counter(
            "ct_serve_request_errors", "Prediction requests answered with an error", ["status"], registry=r
        )
        self.latency = Histogram("ct_serve_request_seconds", "Time to answer a prediction request",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.predictions = Counter("ct_serve_predictions", "Images answered, by model version and predicted label",
                                   ["version", "label"], registry=r)  # fmt: skip
        self.version = Gauge("ct_serve_model_version", "The registered version that answers (0: none yet)", registry=r)
        self.swaps = Counter("ct_serve_model_swaps", "Times the service switched to a new @champion", registry=r)
        self.load_failures = Counter("ct_serve_model_load_failures", "Versions that failed to load or to answer "
                                     "their example (the previous one kept serving)", registry=r)  # fmt: skip
        self.log_rows = Counter("ct_serve_log_rows_written", "Prediction log rows written to the lake", registry=r)
        self.log_failures = Counter("ct_serve_log_write_failures", "Failed writes of the prediction log", registry=r)
        self.log_dropped = Counter("ct_serve_log_rows_dropped", "Prediction log rows dropped (too many waiting)",
                                   registry=r)  # fmt: skip
        self.log_waiting = Gauge("ct_serve_log_rows_waiting", "Prediction log rows not yet written", registry=r)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_request(self, status: int, seconds: float) -> None:
        self.requests.labels(str(status)).inc()
        self.latency.observe(seconds)
        if status >= 400:
            self.errors.labels(str(status)).inc()

    def count(self, version: str, labels: list[str]) -> None:
        for label, n in Counter(labels).items():
            self.predictions.labels(version, label).inc(n)
