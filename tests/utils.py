"""What the tests share besides fixtures (those are in conftest.py): the repository's paths and the child-process
setting of the tests that interrupt a command."""

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
