"""Measurements a user runs on their own machine: ``mergerscan bench engine|sources|plan`` and
``mergerscan doctor [--gpu]``.  Each writes one JSON document (``-o/--output``) and prints a
short summary; nothing here asserts on a timing.  Only the command lines (``bench.cli``) are
imported by ``mergerscan.cli``; the measurements import what they measure lazily."""
