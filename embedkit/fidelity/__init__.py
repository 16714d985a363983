"""Compression-fidelity probes for compressor-decoders such as CoCoA's <EOS> reconstruction."""

from embedkit.fidelity.planted import PLANTED_TEXTS, ProbeText, Roles, read_probe_texts
from embedkit.fidelity.probe import EosCompressor, FidelityReport, run_probes

__all__ = ["PLANTED_TEXTS", "EosCompressor", "FidelityReport", "ProbeText", "Roles", "read_probe_texts", "run_probes"]
