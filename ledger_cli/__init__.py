"""The ``ledger`` command and the developer tools, above the three layers.

``main`` is the command line (``ledger serve``, ``work``, ``rebuild``, ``status``, ``verify``,
``fulfill``, ``send``, ``demo``, ``flex-standin``); ``demo``, ``send``, ``flex_standin`` and
``scenarios`` are the tools a newcomer, the tests and the benchmarks share. Nothing in
``ledger/``, ``projections/`` or ``api/`` imports this package.
"""
