"""Every runtime tunable in one place, units in the names."""

from __future__ import annotations

# A call past its soft timeout_s gets this long to unwind before the supervisor kills it.
KILL_GRACE_S = 1.0
# A worker that is not READY this long after the spawn request is killed (init hung).
INIT_TIMEOUT_S = 60.0
# How long the zygote may take to import the handler module.
LOAD_TIMEOUT_S = 60.0
# How long to wait for the zygote's report of a dead worker's exit status.
EXIT_STATUS_WAIT_S = 0.5

# After a start failure (import or init), wait BACKOFF_S[n] before the next attempt;
# after len(BACKOFF_S) consecutive failures the pool is FATAL.
BACKOFF_S = (0.5, 1.0, 2.0)

# Sync workers hold one pipelined call besides the running one while the pool's recent
# service time is below this (see runtime/dispatcher.py).
PIPELINE_MAX_SERVICE_S = 0.002

# The supervisor's periodic tick: scale down idle workers, refill to min, retry backoffs.
TICK_S = 0.25

# Service-time estimate: exponentially weighted moving average with this weight per call.
SERVICE_EWMA_WEIGHT = 0.2
# Assumed service time and spawn time before any were measured.
INITIAL_SERVICE_S = 0.005
INITIAL_SPAWN_S = 0.02
# How many recent spawn durations are kept for the p50 shown by the API.
SPAWN_SAMPLES = 64

# On shutdown: how long zygotes get to stop their workers before SIGKILL.
STOP_TIMEOUT_S = 3.0

# Largest control message between the gateway and a zygote (the function spec is the biggest).
CONTROL_PACKET_BYTES = 1024 * 1024
