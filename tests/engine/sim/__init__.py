"""Deterministic two-host simulation of the flow engine (DESIGN.md §7, second test bed).

``stack`` models the local TCP stacks, ``wire`` the impaired network between them,
``harness`` wires stack <-> engine <-> wire <-> engine <-> stack on a simulated clock, and
``invariants`` checks DESIGN.md §6 on every finished run.
"""
