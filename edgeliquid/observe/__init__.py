"""Looking at policies and runs: offline replay of flight recordings, the latency profiler
(policies, recordings, live links, wake-up floor) and the backend benchmark.

May import the model, the runtime and the node (its codec, config and recordings); never hil or cli.
"""
