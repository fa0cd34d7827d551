"""The pure core of cpi-monitor: catalog, estimators, windows, routing.

Nothing in this package touches Kafka, Faust or the network, so every piece
can be tested with plain Python values.
"""
