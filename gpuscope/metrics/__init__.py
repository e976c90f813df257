"""`gpuscope metrics`: a Prometheus exporter over the rings of running engines (gpuscope.metrics.exporter), their
events turned into series (meter, series) and the last seconds of a ring captured as a trace when a condition fires
(capture). See docs/metrics.md."""
