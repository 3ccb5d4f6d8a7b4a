"""Deterministic two-host simulation of the flow engine (docs/ARCHITECTURE.md "Test beds").

``stack`` models the local TCP stacks, ``wire`` the impaired network between them,
``harness`` wires stack <-> engine <-> wire <-> engine <-> stack on a simulated clock, and
``invariants`` checks the invariants of docs/ARCHITECTURE.md on every finished run.
"""
