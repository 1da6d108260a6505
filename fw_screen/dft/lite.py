"""Funnel stage 5 (DFT-lite tier) — property: a Quantum ESPRESSO band gap at the ML-relaxed structure.

The ML band-gap models available offline are far from DFT on oxides and small gaps (measured in
``benchmarks/bench_band_gap.py`` against the truth set in ``tests/data/band_gap_truth``), so a target hit
that promotion acts on can rest on DFT instead: ``property.method: dft_lite`` computes, for every ML-stable
candidate of at most ``property.dft_lite_max_sites`` sites, a PBE scf -> nscf band gap on the structure
the ML potential relaxed (no vc-relax) with reduced k-point densities (``property.dft_lite_kppa`` and
``property.dft_lite_nscf_kppa``), through the DFT stage's code path (:func:`fw_screen.dft.qe.chain.run_chain`,
custodian handlers, FireWorks category ``dft``).

Pure science: structure in, band gap out; no database, no FireWorks.
"""

from __future__ import annotations

from pathlib import Path

from fw_screen.dft import qe
from fw_screen.spec import CampaignSpec


def settings(spec: CampaignSpec, env: dict | None = None) -> dict:
    """The DFT stage's ``dft.qe`` settings with the tier's k-point densities (``property.dft_lite_kppa`` for
    the scf, ``property.dft_lite_nscf_kppa`` for the nscf); ``env`` as :func:`fw_screen.dft.qe.settings.resolve_settings`.
    A different k density is a different protocol (its id differs from the full DFT chain's)."""
    prop = spec.property
    qe_spec = {**spec.dft.qe, "kppa": int(prop.dft_lite_kppa), "nscf_kppa": int(prop.dft_lite_nscf_kppa)}
    return qe.resolve_settings(qe_spec, env)


def too_large(structure, spec: CampaignSpec) -> str | None:
    """Why ``structure`` gets no DFT-lite gap (more sites than ``property.dft_lite_max_sites``), else None."""
    limit = int(spec.property.dft_lite_max_sites)
    if len(structure) > limit:
        return f"{len(structure)} sites > property.dft_lite_max_sites {limit}"
    return None


def band_gap(structure, protocol: dict, settings: dict, workdir, *, checkpoint: dict | None = None,
             walltime_s: float | None = None) -> dict:
    """scf -> nscf -> band gap on ``structure`` as given (:func:`fw_screen.dft.qe.chain.run_chain` with ``relax=False``;
    same result keys, ``band_gap`` is the dict of :func:`fw_screen.dft.qe.io.band_gap`)."""
    return qe.run_chain(structure, protocol, settings, Path(workdir), kind="crystal", checkpoint=checkpoint,
                        walltime_s=walltime_s, relax=False)
