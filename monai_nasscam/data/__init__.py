"""MoNuSAC 2020 data: ImageScope XML reading, rasterisation, image + mask folders (palettes, value maps), the prepare
step, a synthetic generator, stain normalisation, splits, the prepared datalist and its class weights, and MONAI
training / validation transforms."""

from .chains import inference_transforms, train_transforms, val_transforms
from .classes import CLASS_COLORS, CLASS_IDS, CLASS_NAMES, NUM_CLASSES, labels_dict, normalize_layer_name, parse_remap
from . import datalist
from .datalist import *  # noqa: F403  (the prepared datalist: its __all__ is part of this package's)
from ..errors import DataError
from .imagescope import Annotations, Region, read_imagescope_xml, write_imagescope_xml
from .loader import SignalSafeDataLoader
from .instance_table import read_instance_classes
from .mask_folder import FolderCase, MaskFolderSpec, load_folder_case, scan_mask_folder
from .monusac import MoNuSACCase, load_case, scan_monusac
from .palette import PALETTE_PRESETS, Palette, ValueMap, parse_palette, parse_value_map
from .prepare import prepare_dataset
from .raster import Masks, rasterize_regions
from .sampling import ClassBalancedCropDataset, grid_windows
from .slide import read_rgb
from .split import make_split, split_by_image, split_by_patient
from .stain import MacenkoNormalizer, ReinhardNormalizer, create_stain_normalizer, stain_normalizer_from_dict
from .synth import generate_dataset, synth_tile
from .transforms import (
    AMBIGUOUS_KEY,
    DropEmptyd,
    EnsureAmbiguousd,
    ExcludeAmbiguousd,
    IgnoreAmbiguousd,
    ClassMapToMultiLabeld,
    RandClassCropd,
    RandMedianSmoothd,
)

__all__ = [
    "SignalSafeDataLoader",
    "CLASS_COLORS",
    "CLASS_IDS",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "labels_dict",
    "normalize_layer_name",
    "parse_remap",
    *datalist.__all__,
    "DataError",
    "Annotations",
    "Region",
    "read_imagescope_xml",
    "write_imagescope_xml",
    "FolderCase",
    "MaskFolderSpec",
    "load_folder_case",
    "read_instance_classes",
    "scan_mask_folder",
    "PALETTE_PRESETS",
    "Palette",
    "ValueMap",
    "parse_palette",
    "parse_value_map",
    "MoNuSACCase",
    "load_case",
    "scan_monusac",
    "prepare_dataset",
    "Masks",
    "rasterize_regions",
    "ClassBalancedCropDataset",
    "grid_windows",
    "read_rgb",
    "make_split",
    "split_by_image",
    "split_by_patient",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "create_stain_normalizer",
    "stain_normalizer_from_dict",
    "generate_dataset",
    "synth_tile",
    "AMBIGUOUS_KEY",
    "DropEmptyd",
    "EnsureAmbiguousd",
    "ExcludeAmbiguousd",
    "IgnoreAmbiguousd",
    "ClassMapToMultiLabeld",
    "RandClassCropd",
    "RandMedianSmoothd",
    "inference_transforms",
    "train_transforms",
    "val_transforms",
]
