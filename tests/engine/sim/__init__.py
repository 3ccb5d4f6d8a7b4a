"""Deterministic two-host simulation of the flow engine (docs/ARCHITECTURE.md "The engine
simulation").

``stack`` models the local TCP stacks, ``wire`` the impaired network between them,
``harness`` wires stack <-> engine <-> wire <-> engine <-> stack on a simulated clock, and
``invariants`` checks the properties of docs/daemon.md "What the tests check" on every
finished run.
"""
