"""The paper's experiments: a resumable runner over (network, seed, fold), the tables of Tables 5
and 6 (honest per-case metrics, and optionally the paper's per-slice protocol, labelled as such),
the ablation presets of Table 6 and Figure 7, and figures like Figures 4, 5 and 7.

    python -m pam_monai experiment --dataset brats --networks fpa,unet --seeds 2 --output DIR

See :func:`pam_monai.experiments.runner.experiment`.
"""

from .runner import ExperimentResult, Run, experiment, run_experiment
from .variants import PRESETS, Variant, effective_options, parse_networks, parse_variant, preset_networks

__all__ = [
    "PRESETS",
    "ExperimentResult",
    "Run",
    "Variant",
    "effective_options",
    "experiment",
    "parse_networks",
    "parse_variant",
    "preset_networks",
    "run_experiment",
]
