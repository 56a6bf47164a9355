"""monai-nasscam: NAS-SCAM searched attention for nuclei segmentation, as MONAI components.

Importing the package changes nothing process-wide: a user who puts its blocks or networks into their own bundle
keeps MONAI's behaviour. The bundle's workflows install what they need themselves: the one-line report of a bad input
or an interruption (:func:`monai_nasscam.errors.install_excepthook`, the first step of every config's
``initialize``), and the rule that loads a checkpoint saved on a GPU onto a machine without it
(:func:`monai_nasscam.serialization.install_cpu_fallback`, when a run's network is built by
:func:`monai_nasscam.networks.run_folder.build_network`). The ``nasscam`` command reports errors itself.
"""

__version__ = "0.1.0"
