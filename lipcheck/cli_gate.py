"""CLI commands of the robustness gate (check, compare, plot): registered on lipcheck.cli.app."""
