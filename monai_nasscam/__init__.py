"""monai-nasscam: NAS-SCAM searched attention for nuclei segmentation, as MONAI components."""

__version__ = "0.1.0"
