"""monai-nasscam: NAS-SCAM searched attention for nuclei segmentation, as MONAI components.

Importing the package (every bundle config does so first) installs two process-wide conveniences: a bad input found
by a workflow's checks ends the run with one ``error: ...`` line instead of a traceback
(:func:`monai_nasscam.errors.install_excepthook`), and checkpoints saved on a GPU load on a machine without it
(:func:`monai_nasscam.serialization.install_cpu_fallback`; done here when torch is already imported, as in the
bundle configs, and otherwise when the first module that loads networks is).
"""

import sys as _sys

from monai_nasscam.errors import install_excepthook as _install_excepthook

__version__ = "0.1.0"

_install_excepthook()
if "torch" in _sys.modules:  # do not import torch for the light command-line tools
    from monai_nasscam.serialization import install_cpu_fallback as _install_cpu_fallback

    _install_cpu_fallback()
