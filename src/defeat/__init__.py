"""defeat: distil object detectors with DeFeat (Guo et al., CVPR 2021), plus the analyses behind it."""

__version__ = "0.1.0"
