"""`tessera bench`: the standard workloads of BENCHMARKS.md.

Modules: cli.py (the subcommand: options, and the refusal of options a workload would
ignore), offline.py (latency and throughput on an in-process engine, against the
roofline; the helpers benchmarks/ scripts share), serving.py (the serving workload against
a running server).
"""
