"""Reliability tests: fault injection against the fake upstreams, restarts of the real
process, and the helpers they share (``reliability_kit``)."""
