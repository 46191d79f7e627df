"""The planner: where models go, in what parallel layout, at what SLO attainment and cost.

Modules (no torch, no model): hardware (devices and prices), traffic (arrivals: Poisson,
Gamma bursts, traces), latency (step time from a `tessera bench profile` or the roofline),
simulator (the engine's scheduler on a simulated clock), placement (AlpaServe's greedy
placement with the simulator in the loop), deployment (the deployment file), plan
(`tessera plan`: the report and the cost formula).
"""
