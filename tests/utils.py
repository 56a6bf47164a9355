"""What the tests share besides fixtures (those are in conftest.py): the repository's paths, the child-process
setting of the tests that interrupt a command, hand-written ImageScope XML and evaluate.yaml on fixed batches."""

import json
import signal
from pathlib import Path

#: the repository checkout the tests run from
REPO = Path(__file__).resolve().parents[1]
#: the bundle's configs
CONFIGS = REPO / "bundle" / "configs"
#: small files the tests read (field examples, the standalone search.yaml of before the two-file form)
ASSETS = Path(__file__).resolve().parent / "assets"


def default_sigint() -> None:
    """``preexec_fn`` of a child process that a test interrupts with SIGINT.

    A shell that starts a job in the background (``cmd &``) sets SIGINT to ignored, and a child inherits that: Python
    then installs no ``KeyboardInterrupt`` handler and the signal does nothing. Restoring the default in the child lets
    the test send a Ctrl-C however pytest itself was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def imagescope_xml(layers) -> str:
    """ImageScope XML in the MoNuSAC layout (RegionAttributeHeaders, Plots), written by hand so that a test can set
    what the project's own writer (``write_imagescope_xml``) never writes: the layer ``Name``, an empty class
    attribute, region ``Type`` (0 polygon, 1 rectangle, 2 ellipse) and ``NegativeROA``.

    Args:
        layers: ``(class attribute, layer Name, [(Type, NegativeROA, [(x, y), ...]), ...])`` in file order; an empty
            class attribute writes ``<Attributes/>``.
    """
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<Annotations MicronsPerPixel="0.252100">\n']
    rid = 0
    for lid, (attr, name, regions) in enumerate(layers, start=1):
        out.append(f'<Annotation Id="{lid}" Name="{name}" ReadOnly="0" Type="4" LineColor="65280" Visible="1">\n')
        out.append(f'\t<Attributes>\n\t\t<Attribute Name="{attr}" Id="0" Value=""/>\n\t</Attributes>\n' if attr else "\t<Attributes/>\n")
        out.append("\t<Regions>\n\t\t<RegionAttributeHeaders>\n")
        out.append('\t\t\t<AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>\n')
        out.append('\t\t\t<AttributeHeader Id="1" Name="Description" ColumnWidth="-1"/>\n')
        out.append("\t\t</RegionAttributeHeaders>\n")
        for rtype, negative, verts in regions:
            rid += 1
            out.append(f'\t\t<Region Id="{rid}" Type="{rtype}" Zoom="1" Text="" NegativeROA="{negative}">\n'
                       "\t\t\t<Attributes/>\n\t\t\t<Vertices>\n")
            out.extend(f'\t\t\t\t<Vertex X="{x}" Y="{y}" Z="0"/>\n' for x, y in verts)
            out.append("\t\t\t</Vertices>\n\t\t</Region>\n")
        out.append("\t</Regions>\n\t<Plots/>\n</Annotation>\n")
    out.append("</Annotations>\n")
    return "".join(out)


def evaluate_fixed(metrics_dir: Path, items, **overrides) -> tuple[dict, str]:
    """evaluate.yaml's postprocessing, metrics and report writer (its last handler) run on fixed batches through an
    identity network (each ``image`` already is the prediction's logits); ``overrides``: config ids and values set
    after ``validate#protocol`` = ``{"split": "fixed"}``. Returns ``metrics.json`` (parsed) and ``metrics.md``."""
    import torch
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedEvaluator

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")])
    parser["metrics_dir"] = str(metrics_dir)
    parser["validate#protocol"] = {"split": "fixed"}
    parser["validate#handlers"] = [parser["validate#handlers"][-1]]  # only the report writer
    for key, value in overrides.items():
        parser[key] = value
    SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=items,
        network=torch.nn.Identity(),
        postprocessing=parser.get_parsed_content("validate#postprocessing"),
        key_val_metric=parser.get_parsed_content("validate#key_metric"),
        additional_metrics=parser.get_parsed_content("validate#additional_metrics"),
        val_handlers=parser.get_parsed_content("validate#handlers"),
    ).run()
    return json.loads((Path(metrics_dir) / "metrics.json").read_text()), (Path(metrics_dir) / "metrics.md").read_text()
