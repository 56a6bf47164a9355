"""Inference on new images and whole slides: region reading, tile-wise stain normalisation, block-wise sliding-window
inference into a uint8 class map (and quantised class probabilities), nuclei (connected components split by the
instance separation of evaluation) with counts, measurements, QuPath GeoJSON polygons and a CSV, overlays, and
network preparation for fast CPU inference. Driven by ``bundle/configs/inference.yaml``."""

from monai_nasscam.inference.instances import InstanceSeparator, instances_from_class_map
from monai_nasscam.inference.nuclei import (
    GeoJSONWriter,
    Nucleus,
    count_components,
    iter_nuclei,
    nucleus_feature,
    nucleus_measurements,
)
from monai_nasscam.inference.outputs import (
    ClassMapNiftiWriter,
    ClassMapPNGWriter,
    InferredImage,
    NucleiCSVWriter,
    NucleiGeoJSONWriter,
    OutputWriter,
    OverlayWriter,
)
from monai_nasscam.inference.optimize import PreparedNetwork, prepare_network
from monai_nasscam.inference.predictor import (
    InferenceError,
    NucleiPredictor,
    check_inference_inputs,
    find_images,
    load_weights,
    run_dir_of,
)
from monai_nasscam.inference.regions import ArrayRegionReader, TiffRegionReader, open_region_reader
from monai_nasscam.inference.stain import SlideStainNormalizer, load_stain_reference, resolve_stain_spec
from monai_nasscam.inference.stitching import CentreStitchingInferer
from monai_nasscam.inference.tiling import (
    BlockPlan,
    logits_to_class_map,
    plan_blocks,
    predict_class_map,
    quantise_probabilities,
)

__all__ = [
    "OutputWriter",
    "InferredImage",
    "NucleiGeoJSONWriter",
    "NucleiCSVWriter",
    "ClassMapPNGWriter",
    "ClassMapNiftiWriter",
    "OverlayWriter",
    "CentreStitchingInferer",
    "GeoJSONWriter",
    "Nucleus",
    "count_components",
    "iter_nuclei",
    "nucleus_feature",
    "nucleus_measurements",
    "InstanceSeparator",
    "instances_from_class_map",
    "PreparedNetwork",
    "prepare_network",
    "InferenceError",
    "NucleiPredictor",
    "check_inference_inputs",
    "find_images",
    "load_weights",
    "run_dir_of",
    "ArrayRegionReader",
    "TiffRegionReader",
    "open_region_reader",
    "SlideStainNormalizer",
    "load_stain_reference",
    "resolve_stain_spec",
    "BlockPlan",
    "logits_to_class_map",
    "plan_blocks",
    "predict_class_map",
    "quantise_probabilities",
]
