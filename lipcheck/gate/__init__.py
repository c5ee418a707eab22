"""The robustness gate behind `lipcheck check`. Reads a finished Report; computes no
Lipschitz bound. Each module imports only those before it: thresholds -> checks ->
robustness, comparison -> verdict -> outputs (tests/test_import_graph.py keeps it so)."""
