"""Faust agents joining the streams to the models, the Prometheus exporter and the CLI."""
