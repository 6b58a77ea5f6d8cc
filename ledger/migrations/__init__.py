"""The schema's numbered, forward-only steps (``NNNN_name.sql``), applied by ``ledger.migrate``."""
