"""prodsearch: visual product search. Index catalog photos, answer "which SKU is this photo?"."""

import os

__version__ = "0.1.0"

# Torch's OpenMP threads (libgomp) spin while they wait for work by default; beside another busy
# process a spinning thread holds a core the thread with the work needs, and training and embedding
# ran 3-12x slower (BENCHMARKS.md, "Torch on shared cores"). Passive threads sleep and are woken for
# the next parallel region. OpenMP reads this once, when torch loads: so here, before any import of
# torch (a program that imported torch first keeps its own). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
