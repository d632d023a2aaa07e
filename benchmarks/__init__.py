"""Benchmarks: fluxaorm raced against a hand-written baseline and SQLAlchemy.

``run.py`` is the entry point (``make bench``); ``workload.py`` says what every
competitor does, one module per competitor does it, ``harness.py`` times and
checks the runs and ``report.py`` writes the results.
"""
