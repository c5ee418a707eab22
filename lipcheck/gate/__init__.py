"""The robustness gate behind `lipcheck check`: thresholds, checks, the verdict and what it
hands to people and CI systems. Reads a finished Report; computes no Lipschitz bound."""
