"""Built-in simulator of the upstream APIs batchscope polls, served over real HTTP.

- :class:`~batchscope.simulator.engine.FakeEngine`: Camunda 7 / Operaton / CIB seven batch REST API.
- :class:`~batchscope.simulator.datadog.FakeDatadog`: Datadog Synthetics CI batch API.
- :func:`~batchscope.simulator.server.start_simulator`: both on loopback ports.
- :class:`~batchscope.simulator.scenario.DemoScenario`: the scripted demo timeline.

Used by ``batchscope demo``, by the test suite as the fake upstream, by the benchmarks, and
standalone through ``python -m batchscope.simulator``.
"""
