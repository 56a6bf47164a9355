"""NAS-SCAM networks: the searchable attention cell, attention blocks and their registry, the U-Net and baselines,
genotypes and the diagnostics of their alphas, and the choice of a run folder's network."""

from monai_nasscam.networks.add_attention import add_attention
from monai_nasscam.networks import attentions
from monai_nasscam.networks.attentions import *  # noqa: F403  (the attention registry: its __all__ is part of this package's)
from monai_nasscam.networks.blocks import CBAMBlock, NASCAMBlock, NASSAMBlock, NASSCAMBlock, SCSEBlock
from monai_nasscam.networks.cell import NASAttentionCell, arch_parameters, weight_parameters
from monai_nasscam.networks.alphas import alpha_weights, diagnose_genotype, search_diagnostics
from monai_nasscam.networks.diagnostics import SearchDiagnostics, diagnose
from monai_nasscam.networks.folded_cell import FoldedAttentionCell, fold_attention_cells
from monai_nasscam.networks.genotype import POSITIONS, Genotype, agreement, consensus, random_genotype
from monai_nasscam.networks.nets.deeplabv3plus import DeepLabV3Plus
from monai_nasscam.networks.nets.nasscam_unet import NASSCAMUNet
from monai_nasscam.networks.verdict import VERDICTS, VerdictRule, verdict_advice
from monai_nasscam.networks.run_folder import build_network, check_checkpoint, resolve_network_choice

__all__ = [
    *attentions.__all__,
    "build_network",
    "check_checkpoint",
    "resolve_network_choice",
    "NASSAMBlock",
    "NASCAMBlock",
    "NASSCAMBlock",
    "CBAMBlock",
    "SCSEBlock",
    "NASAttentionCell",
    "FoldedAttentionCell",
    "fold_attention_cells",
    "NASSCAMUNet",
    "DeepLabV3Plus",
    "Genotype",
    "POSITIONS",
    "SearchDiagnostics",
    "VERDICTS",
    "VerdictRule",
    "diagnose",
    "diagnose_genotype",
    "alpha_weights",
    "search_diagnostics",
    "verdict_advice",
    "random_genotype",
    "consensus",
    "agreement",
    "add_attention",
    "arch_parameters",
    "weight_parameters",
]
