"""Inference on new images and whole slides (read region by region by :func:`monai_nasscam.data.slide.open_image`):
tile-wise stain normalisation, block-wise sliding-window inference into a uint8 class map (and quantised class
probabilities), nuclei (connected components split by the instance separation of evaluation) with counts,
measurements, QuPath GeoJSON polygons and a CSV, overlays, and network preparation for fast CPU inference. Driven by
``bundle/configs/inference.yaml``."""

from monai_nasscam.errors import InferenceError
from monai_nasscam.inference.geojson import nucleus_feature, nucleus_measurements
from monai_nasscam.inference.instances import InstanceSeparator, instances_from_class_map
from monai_nasscam.inference.nuclei import Nucleus, count_components, iter_nuclei
from monai_nasscam.inference.optimize import PreparedNetwork, prepare_network
from monai_nasscam.inference.outputs import (
    ClassMapNiftiWriter,
    ClassMapPNGWriter,
    InferredImage,
    NucleiCSVWriter,
    NucleiGeoJSONWriter,
    OutputWriter,
    OverlayWriter,
)
from monai_nasscam.inference.predicting import ClassMapPredictor, load_weights, run_dir_of
from monai_nasscam.inference.predictor import NucleiPredictor, check_inference_inputs
from monai_nasscam.inference.reading import ImageSource, find_images
from monai_nasscam.inference.stain import SlideStainNormalizer, load_stain_reference, resolve_stain_spec
from monai_nasscam.inference.stitching import CentreStitchingInferer
from monai_nasscam.inference.tiling import (
    BlockPlan,
    logits_to_class_map,
    plan_blocks,
    predict_class_map,
    quantise_probabilities,
)
from monai_nasscam.inference.writing import OutputFolder

__all__ = [
    "OutputWriter",
    "InferredImage",
    "NucleiGeoJSONWriter",
    "NucleiCSVWriter",
    "ClassMapPNGWriter",
    "ClassMapNiftiWriter",
    "OverlayWriter",
    "CentreStitchingInferer",
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
    "ImageSource",
    "ClassMapPredictor",
    "OutputFolder",
    "check_inference_inputs",
    "find_images",
    "load_weights",
    "run_dir_of",
    "SlideStainNormalizer",
    "load_stain_reference",
    "resolve_stain_spec",
    "BlockPlan",
    "logits_to_class_map",
    "plan_blocks",
    "predict_class_map",
    "quantise_probabilities",
]
