"""train.yaml -> evaluate.yaml -> ckpt_export end to end on a tiny synthetic set, run from another working directory;
resume; a derived (genotype) network; bad input caught before training; metadata.json; MLflow tracking.

One synthetic dataset and one trained U-Net are shared by the whole module (session fixtures); networks are tiny
(widths 4-16, 32 x 32 crops, 2 iterations per epoch) so the module runs in well under a minute of CPU time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.utils import REPO

CONFIGS = REPO / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.yaml")
EVALUATE = str(CONFIGS / "evaluate.yaml")
META = str(CONFIGS / "metadata.json")
FEATURES = [4, 4, 8, 8, 16]
#: the tiny budget every run here uses
TINY = {
    "roi_size": [32, 32],
    "features": FEATURES,
    "num_workers": 0,
    "epoch_crops": 8,
    "progress": False,
    "sw_batch_size": 16,
}


def _cli_args(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, (list, bool)) else str(value)]
    return args


def bundle_cli(command: str, config: str, cwd: Path, *positional: str, **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle COMMAND [positional] --config_file CONFIG --key value ...`` in ``cwd``."""
    cmd = [sys.executable, "-m", "monai.bundle", command, *positional, "--config_file", config, *_cli_args(overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny convolutions: threads only add overhead on a shared CPU
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def bundle_run(config_file, **overrides) -> None:
    """``monai.bundle.run`` in this process (for the tests that check errors or several short runs)."""
    from monai.bundle import run

    run(config_file=config_file, meta_file=META, **overrides)


def _error_chain(excinfo) -> str:
    """All messages of an exception and its causes (MONAI wraps errors raised while instantiating a component)."""
    messages, error = [], excinfo.value
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A working directory that is not the repository: every command below runs from here."""
    return tmp_path_factory.mktemp("bundle_work")


@pytest.fixture(scope="session")
def prepared(workdir) -> Path:
    """A tiny prepared dataset (8 synthetic tiles of 4 patients: 4 training, 2 validation, 2 test images)."""
    from monai_nasscam.data import generate_dataset, prepare_dataset

    generate_dataset(workdir / "raw", n_images=8, n_patients=4, seed=0, min_size=64, max_size=128)
    prepare_dataset(workdir / "raw", workdir / "prep", workers=0, progress=False)
    return workdir / "prep"


@pytest.fixture(scope="session")
def trained_unet(workdir, prepared) -> Path:
    """``train.yaml --attention unet`` for 2 epochs, from the command line, with paths relative to ``workdir``."""
    bundle_cli("run", TRAIN, workdir, dataset_dir="prep", output_dir="runs/unet", attention="unet", epochs=2, **TINY)
    return workdir / "runs" / "unet"


def _tiny_network(**kwargs):
    from monai_nasscam.networks.run_folder import build_network

    return build_network(features=FEATURES, **kwargs)


def _nas_genotype(path: Path, attention: str = "nas-scam-p") -> Path:
    from monai_nasscam.networks import Genotype, NASSCAMUNet

    torch.manual_seed(1)
    supernet = NASSCAMUNet(attention=attention, features=FEATURES)
    for alpha in supernet.arch_parameters():  # a non-trivial architecture
        alpha.data.normal_()
    return Genotype.from_model(supernet).save(path)


# ----------------------------------------------------------------------------------------------- train / evaluate
def test_train_writes_best_model_checkpoint_and_tensorboard(trained_unet):
    from monai.handlers import CheckpointLoader

    model = trained_unet / "models" / "model.pt"
    state = torch.load(model, map_location="cpu", weights_only=True)
    net = _tiny_network(attention="unet")
    assert set(state) == set(net.state_dict())  # a plain state dict of the network
    CheckpointLoader(load_path=str(model), load_dict={"model": net})(_engine())  # MONAI's weights-only loader
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])

    resume = torch.load(trained_unet / "checkpoints" / "train_checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(resume) == {"network", "optimizer", "trainer", "best_model"}
    assert resume["trainer"]["max_epochs"] == 2 and resume["trainer"]["iteration"] == 4  # 2 epochs of 2 iterations
    assert len(resume["best_model"]["_saved"]) == 1
    assert any((trained_unet / "tensorboard").iterdir())
    manifest = json.loads((trained_unet.parent.parent / "prep" / "manifest.json").read_text())
    assert json.loads((trained_unet / "stain.json").read_text()) == manifest["settings"]["stain"]  # for inference
    assert not (trained_unet / "genotype.json").exists()  # a baseline has none


def _engine():
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = None
    return engine


def _pooled_dice_by_hand(net, entries, roi_size) -> np.ndarray:
    """Pooled per-class Dice recomputed here: whole image, MONAI sliding window (overlap 0.5), sigmoid > 0.5."""
    from monai.inferers import sliding_window_inference

    from monai_nasscam.data import val_transforms

    chain = val_transforms()
    inter, sums = np.zeros(4), np.zeros(4)
    net.eval()
    for entry in entries:
        item = chain(dict(entry))
        with torch.no_grad():
            logits = sliding_window_inference(item["image"][None], roi_size, 16, net, overlap=0.5, cval=1.0)
        pred = (torch.sigmoid(logits)[0] > 0.5).numpy().astype(np.float64)
        gt = np.asarray(item["label"], dtype=np.float64)
        inter += (pred * gt).sum(axis=(1, 2))
        sums += pred.sum(axis=(1, 2)) + gt.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, 2 * inter / sums, np.nan)


def test_evaluate_writes_metrics_json_and_markdown(workdir, prepared, trained_unet):
    from monai_nasscam.data.datalist import split_entries
    from monai_nasscam.metrics import CLASS_NAMES

    bundle_cli(
        "run", f"['{TRAIN}','{EVALUATE}']", workdir,
        dataset_dir="prep", output_dir="runs/unet", attention="unet", **TINY,
        val_roi_size=[32, 32], precision="fp32",  # the windows and the float32 of the computation by hand below
    )
    metrics = json.loads((trained_unet / "metrics.json").read_text())
    for key in ("dice", "pq", "pq_monusac_official", "dice_per_image"):
        assert list(metrics[key]) == [*CLASS_NAMES, "mean"]
        assert all(v is None or 0.0 <= v <= 1.0 for v in metrics[key].values())
    protocol = metrics["protocol"]
    assert protocol["split"] == "test" and protocol["images"] == 2
    assert protocol["inferer"]["name"] == "SlidingWindowInferer" and protocol["inferer"]["overlap"] == 0.5
    assert protocol["inferer"]["fit_to_image"] is True  # roi_size is the largest window; small images get one window
    assert protocol["threshold"] == 0.5 and protocol["network"]["attention"] == "unet"

    # the pooled Dice matches an independent computation from the saved model
    net = _tiny_network(attention="unet")
    net.load_state_dict(torch.load(trained_unet / "models" / "model.pt", weights_only=True))
    expected = _pooled_dice_by_hand(net, split_entries(prepared, "test"), (32, 32))
    for name, value in zip(CLASS_NAMES, expected):
        assert metrics["dice"][name] == (None if np.isnan(value) else pytest.approx(value, abs=1e-9))

    table = (trained_unet / "metrics.md").read_text()
    assert "| metric (%) | Epithelial | Lymphocyte | Neutrophil | Macrophage | mean |" in table
    assert "MoNuSAC 2020 official script" in table and "pooled over the split" in table


def test_evaluate_validation_split_with_centre_stitching(workdir, prepared, trained_unet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundle_run(
        [TRAIN, EVALUATE],
        dataset_dir=str(prepared),
        output_dir=str(trained_unet),
        metrics_dir=str(tmp_path / "val"),
        attention="unet",
        eval_split="validation",
        eval_inferer="centre_stitch",
        **TINY,
    )
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert metrics["protocol"]["split"] == "validation" and metrics["protocol"]["images"] == 2
    assert metrics["protocol"]["dataset"] == str(Path(prepared).resolve())  # which prepared set was scored
    # a misspelt split: one line naming the setting, nothing written
    from monai_nasscam.errors import find_input_error

    with pytest.raises(Exception) as raised:
        bundle_run([TRAIN, EVALUATE], dataset_dir=str(prepared), output_dir=str(trained_unet),
                   metrics_dir=str(tmp_path / "bad"), attention="unet", eval_split="tset", **TINY)
    assert str(find_input_error(raised.value)) == "--eval_split must be one of training, validation, test, all, got 'tset'."
    assert not (tmp_path / "bad").exists()
    assert metrics["protocol"]["inferer"] == {
        "name": "CentreStitchingInferer", "roi_size": [32, 32], "stride": [16, 16], "sw_batch_size": 16, "cval": 1.0
    }


# ------------------------------------------------------------------------------------------------------- export
def test_ckpt_export_torchscript_matches_eager_and_verify_net_in_out(workdir, trained_unet):
    from monai.bundle import verify_net_in_out
    from monai.data import load_net_with_metadata

    ts_path = trained_unet / "models" / "model.ts"
    bundle_cli(
        "ckpt_export", TRAIN, workdir, "network_def",
        filepath=str(ts_path), ckpt_file="runs/unet/models/model.pt", meta_file=META,
        attention="unet", features=FEATURES, use_trace=True, input_shape=[1, 3, 64, 64],
    )
    scripted, meta, extra = load_net_with_metadata(str(ts_path), more_extra_files=["train.json"])
    assert meta["version"] == json.loads(Path(META).read_text())["version"]
    assert "network_def" in json.loads(extra["train.json"])
    net = _tiny_network(attention="unet")
    net.load_state_dict(torch.load(trained_unet / "models" / "model.pt", weights_only=True))
    net.eval()
    for shape in ((1, 3, 64, 64), (2, 3, 96, 48)):  # also a batch and a size other than the traced one
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)

    verify_net_in_out(net_id="network_def", meta_file=META, config_file=TRAIN, device="cpu", n=4, attention="unet",
                      features=FEATURES)


def test_derived_network_trains_from_the_search_output_and_traces(workdir, prepared, tmp_path, monkeypatch):
    """No --attention / --genotype_path: the search's OUTPUT/genotype.json is used; the NAS net exports by tracing."""
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    run_dir = tmp_path / "nas"
    _nas_genotype(run_dir / "genotype.json")
    monkeypatch.chdir(workdir)
    bundle_run(TRAIN, dataset_dir="prep", output_dir=str(run_dir), epochs=1, **TINY)
    ckpt = run_dir / "models" / "model.pt"
    net = _tiny_network(genotype_path=str(run_dir / "genotype.json"))
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    net.eval()
    ckpt_export(net_id="network_def", filepath=str(run_dir / "model.ts"), ckpt_file=str(ckpt), meta_file=META,
                config_file=TRAIN, use_trace=True, input_shape=[1, 3, 32, 32], output_dir=str(run_dir),
                features=FEATURES)
    scripted = load_net_with_metadata(str(run_dir / "model.ts"))[0]
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


def test_record_run_inputs_copies_the_genotype_without_replacing_one(prepared, tmp_path):
    from monai_nasscam.engines import record_run_inputs
    from monai_nasscam.inference.stain import load_stain_reference, resolve_stain_spec
    from monai_nasscam.networks import Genotype

    genotype = _nas_genotype(tmp_path / "search" / "genotype.json")
    run = tmp_path / "run"
    assert record_run_inputs(prepared, run, genotype)
    assert Genotype.load(run / "genotype.json") == Genotype.load(genotype)
    reference = load_stain_reference(resolve_stain_spec("auto", None, run))  # inference with --ckpt_path alone
    assert reference == load_stain_reference(prepared / "manifest.json")
    other = _nas_genotype(tmp_path / "other.json", attention="nas-scam-s")
    with pytest.warns(UserWarning, match="differs from the trained genotype"):
        record_run_inputs(prepared, run, other)
    assert Genotype.load(run / "genotype.json") == Genotype.load(genotype)  # a search's genotype is never replaced
    assert not record_run_inputs(prepared, tmp_path / "rank1", genotype, rank=1)
    assert not (tmp_path / "rank1").exists()


@pytest.mark.parametrize("verdict", ["not converged", "collapsed", "converged", None, "unchecked"])
def test_a_genotype_whose_search_did_not_converge_is_named_once_at_the_start_of_training(tmp_path, caplog, verdict):
    from monai_nasscam.engines import record_run_inputs

    path = _nas_genotype(tmp_path / "search" / "genotype.json")
    data = json.loads(path.read_text())
    if verdict is None:  # a version-1 file: no search section, nothing known, nothing said
        data["version"] = 1
        data.pop("search", None)
    elif verdict == "unchecked":  # decided, but only one validation: the message says so, not "a random pick"
        data["search"].update(verdict="not converged", reasons=["stability not checked (one validation)"])
    else:
        data["search"].update(verdict=verdict, reasons=[])
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="monai_nasscam.engines.run_record"):
        assert record_run_inputs(tmp_path / "no_prep", tmp_path / "run", path, rank=0)
    said = [r.getMessage() for r in caplog.records if "converge" in r.getMessage()]
    if verdict in ("converged", None):
        assert said == []
    elif verdict == "unchecked":
        assert said == [
            f"{path}: the genotype comes from a search whose verdict is 'not converged' (stability not checked (one "
            "validation)), not 'converged'; the alphas decided, but the choice was not shown to hold across two "
            "validations; see docs/search.md"
        ]
    else:
        assert said == [
            f"{path}: the genotype comes from a search whose verdict is {verdict!r}, not 'converged'; a genotype "
            "from a search that did not converge is close to a random pick; see docs/search.md"
        ]


# ------------------------------------------------------------------------------------------------------- resume
def test_run_workflow_resumes_an_interrupted_run_and_restarts_a_changed_one(prepared, tmp_path):
    from monai_nasscam.workflow import DONE_MARKER, STARTED_MARKER, run_workflow

    run = tmp_path / "run"
    common = dict(dataset_dir=str(prepared), attention="unet", **TINY)
    # the state a 2-epoch run leaves when stopped after its first epoch: a checkpoint, a start marker, no done marker
    run_workflow(["train.yaml"], {**common, "epochs": 1}, run, quiet=True)
    started = run / f".train{STARTED_MARKER}"
    record = json.loads(started.read_text())
    record["overrides"]["epochs"] = "2"
    started.write_text(json.dumps(record))
    (run / f".train{DONE_MARKER}").unlink()

    assert run_workflow(["train.yaml"], {**common, "epochs": 2}, run, quiet=True)
    log = (run / "workflow.log").read_text()
    assert "Restored all variables from" in log and "Epoch: 2/2" in log and "Epoch: 1/2" not in log
    assert torch.load(run / "checkpoints" / "train_checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 4
    assert not run_workflow(["train.yaml"], {**common, "epochs": 2}, run, quiet=True)  # done: skipped
    # other overrides: the folder is cleared and the run starts afresh
    assert run_workflow(["train.yaml"], {**common, "epochs": 1, "seed": 3}, run, quiet=True)
    assert "Restored all variables from" not in (run / "workflow.log").read_text()



def test_resume_continues_exactly_like_an_uninterrupted_run(prepared, tmp_path):
    common = dict(dataset_dir=str(prepared), attention="scse", val_interval=1, **TINY)
    bundle_run(TRAIN, output_dir=str(tmp_path / "whole"), epochs=2, **common)
    bundle_run(TRAIN, output_dir=str(tmp_path / "split"), epochs=1, **common)
    bundle_run(TRAIN, output_dir=str(tmp_path / "split"), epochs=2, resume=True, **common)

    whole = torch.load(tmp_path / "whole" / "checkpoints" / "train_checkpoint.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "checkpoints" / "train_checkpoint.pt", weights_only=True)
    assert split["trainer"] == whole["trainer"]
    for key, value in whole["network"].items():
        torch.testing.assert_close(split["network"][key], value, rtol=0, atol=0, msg=key)
    assert split["best_model"] == whole["best_model"]


# ---------------------------------------------------------------------------------------------------- bad input
def test_missing_and_mismatched_genotype_fail_before_training(prepared, tmp_path):
    missing = tmp_path / "nowhere" / "genotype.json"
    with pytest.raises(Exception) as excinfo:
        bundle_run(TRAIN, dataset_dir=str(prepared), output_dir=str(tmp_path / "a"), genotype_path=str(missing), **TINY)
    assert str(missing) in _error_chain(excinfo)

    genotype = _nas_genotype(tmp_path / "p.json", "nas-scam-p")
    with pytest.raises(Exception) as excinfo:
        bundle_run(TRAIN, dataset_dir=str(prepared), output_dir=str(tmp_path / "b"), genotype_path=str(genotype),
                   attention="nas-scam-s", **TINY)
    chain = _error_chain(excinfo)
    assert str(genotype) in chain and "nas-scam-p" in chain and "nas-scam-s" in chain

    with pytest.raises(Exception) as excinfo:  # nothing chosen and no search output
        bundle_run(TRAIN, dataset_dir=str(prepared), output_dir=str(tmp_path / "c"), **TINY)
    assert str(tmp_path / "c" / "genotype.json") in _error_chain(excinfo)
    assert not any((tmp_path / d / "checkpoints").exists() for d in "abc")  # no step was made


def test_choice_and_budget_errors():
    from monai_nasscam.engines import check_train_inputs
    from monai_nasscam.networks.run_folder import resolve_network_choice

    assert resolve_network_choice("unet")[:2] == ("none", None)
    assert resolve_network_choice("deeplabv3plus")[0] == "deeplabv3plus"
    with pytest.raises(ValueError, match="unknown attention 'transformer'"):
        resolve_network_choice("transformer")
    with pytest.raises(ValueError, match="baseline"):
        resolve_network_choice("cbam", "/some/genotype.json")
    with pytest.raises(ValueError, match="multiple of 4"):
        check_train_inputs("/nowhere", attention="unet", batch_size=6)
    with pytest.raises(ValueError, match="val_interval"):
        check_train_inputs("/nowhere", attention="unet", epochs=2, val_interval=3)
    with pytest.raises(ValueError, match="multiple of 16"):
        check_train_inputs("/nowhere", attention="unet", roi_size=[40, 40])
    with pytest.raises(FileNotFoundError, match="nasscam prepare"):
        check_train_inputs("/nowhere", attention="unet")


def test_checkpoint_of_another_architecture_is_named(workdir, prepared, trained_unet, tmp_path):
    model = trained_unet / "models" / "model.pt"
    with pytest.raises(Exception) as excinfo:  # evaluate a U-Net checkpoint as a CBAM U-Net
        bundle_run([TRAIN, EVALUATE], dataset_dir=str(prepared), output_dir=str(trained_unet),
                   metrics_dir=str(tmp_path), attention="cbam", **TINY)
    chain = _error_chain(excinfo)
    assert str(model) in chain and "another architecture" in chain
    assert not (tmp_path / "metrics.json").exists()

    with pytest.raises(Exception) as excinfo:  # resume a U-Net run as a DeepLab V3+
        bundle_run(TRAIN, dataset_dir=str(prepared), output_dir=str(trained_unet), attention="deeplabv3plus",
                   epochs=3, resume=True, **TINY)
    chain = _error_chain(excinfo)
    assert "train_checkpoint.pt" in chain and "another architecture" in chain

    with pytest.raises(Exception) as excinfo:  # nothing to resume
        bundle_run(TRAIN, dataset_dir=str(prepared), output_dir=str(tmp_path / "fresh"), attention="unet",
                   resume=True, **TINY)
    assert "nothing to resume" in _error_chain(excinfo)


# ---------------------------------------------------------------------------------------------------- metadata
#: keys the MONAI model-zoo metadata schema (meta_schema_20240725.json) requires, and those of a tensor format
SCHEMA_KEYS = (
    "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
    "description", "authors", "copyright", "network_data_format",
)
ZOO_KEYS = ("schema", "name", "data_source", "data_type", "image_classes", "label_classes", "pred_classes",
            "eval_metrics", "intended_use", "references")
TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
               "channel_def")


def test_metadata_has_every_model_zoo_key_with_real_versions():
    import monai
    from importlib.metadata import version

    meta = json.loads(Path(META).read_text())
    missing = [k for k in SCHEMA_KEYS + ZOO_KEYS if k not in meta]
    assert not missing, f"metadata.json misses {missing}"
    assert meta["version"] in meta["changelog"]
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    assert meta["required_packages_version"]["pytorch-ignite"] == version("pytorch-ignite")
    # MONAI renames the deprecated optional_packages_version to required_packages_version, overwriting it
    assert "optional_packages_version" not in meta
    for kind, name in (("inputs", "image"), ("outputs", "pred")):
        spec = meta["network_data_format"][kind][name]
        assert [k for k in TENSOR_KEYS if k not in spec] == []
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 3 and pred["num_channels"] == 4 and len(pred["channel_def"]) == 4


# ------------------------------------------------------------------------------------------------------ tracking
def test_mlflow_tracking_to_a_local_store(prepared, tmp_path):
    pytest.importorskip("mlflow", reason="MLflow is optional: pip install mlflow-skinny sqlalchemy alembic")
    pytest.importorskip("sqlalchemy", reason="MLflow's local SQLite store needs sqlalchemy and alembic")
    pytest.importorskip("alembic", reason="MLflow's local SQLite store needs sqlalchemy and alembic")
    out = tmp_path / "tracked"
    bundle_run(TRAIN, dataset_dir=str(prepared), output_dir=str(out), attention="unet", epochs=1, tracking="mlflow",
               **TINY)
    db = out / "mlruns.db"
    assert db.is_file()
    with sqlite3.connect(db) as con:
        runs = con.execute("select status from runs").fetchall()
        keys = {k for (k,) in con.execute("select distinct key from metrics")}
    assert runs and all(status == "FINISHED" for (status,) in runs)
    assert {"train_loss", "val_dice", "val_dice_Epithelial"} <= keys


def test_progress_bar_shows_the_loss():
    import io

    from ignite.engine import Engine

    from monai_nasscam.handlers.training import TrainProgressBar

    stream = io.StringIO()
    engine = Engine(lambda e, batch: [{"loss": torch.tensor(0.25 * batch)}])  # a decollated trainer output
    TrainProgressBar(file=stream, persist=True).attach(engine)
    engine.run([1, 2], max_epochs=1)
    assert "loss=0.5" in stream.getvalue()


# ----------------------------------------------------------------------------------------------- the run's network
def test_the_run_records_its_network_so_export_and_inference_need_no_network_settings(
    prepared, trained_unet, tmp_path, monkeypatch
):
    """RUN/network.json: ``inference.yaml --ckpt_path RUN/models/model.pt`` alone builds the trained U-Net (no
    --attention, no --features), and so does ``ckpt_export`` with ``--output_dir RUN``."""
    import shutil

    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    from monai_nasscam.data.datalist import split_entries
    from monai_nasscam.networks.run_folder import build_network, describe_network

    record = json.loads((trained_unet / "network.json").read_text())
    assert record.pop("mpp") == 0.2521 and record.pop("mpp_source").startswith("dataset: median of")  # synthetic 40x
    assert record == {"attention": "unet", "genotype": None, "features": FEATURES, "dropout": 0.2}
    net = build_network(output_dir=trained_unet, features=None)  # no network setting at all
    net.load_state_dict(torch.load(trained_unet / "models" / "model.pt", weights_only=True))  # strict: same network
    assert describe_network(None, None, trained_unet)["attention"] == "unet"

    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(trained_unet / "models" / "model.pt"),
                meta_file=META, config_file=TRAIN, use_trace=True, input_shape=[1, 3, 32, 32],
                output_dir=str(trained_unet))
    x = torch.rand(1, 3, 32, 64)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(load_net_with_metadata(str(ts))[0](x), net(x), rtol=1e-5, atol=1e-5)

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(split_entries(prepared, "test")[0]["image"], images / "a.png")
    monkeypatch.chdir(tmp_path)
    bundle_run(str(CONFIGS / "inference.yaml"), input_dir=str(images), output_dir=str(tmp_path / "pred"),
               ckpt_path=str(trained_unet / "models" / "model.pt"), roi_size=[32, 32], progress=False,
               optimize="none", save_nifti=False, parallel=1, tune_malloc=False)
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["succeeded"] == 1


def test_network_record_points_at_the_trained_genotype(prepared, tmp_path):
    from monai_nasscam.engines import record_run_inputs
    from monai_nasscam.networks.run_folder import resolve_network_choice

    run = tmp_path / "run"
    _nas_genotype(run / "genotype.json")  # a search wrote RUN/genotype.json
    assert record_run_inputs(prepared, run, None, features=FEATURES)  # trained on the search's genotype
    recorded = json.loads((run / "network.json").read_text())
    assert recorded.pop("mpp") == 0.2521 and recorded.pop("mpp_source").startswith("dataset: median of")
    assert recorded == {"attention": "nas-scam-p", "genotype": "genotype.json", "features": FEATURES}
    other = _nas_genotype(tmp_path / "other.json", attention="nas-scam-s")
    with pytest.warns(UserWarning, match="differs from the trained genotype"):
        record_run_inputs(prepared, run, other, features=FEATURES, dropout=0.1)  # another one, into the same folder
    record = json.loads((run / "network.json").read_text())
    assert record.pop("mpp") == 0.2521 and record.pop("mpp_source").startswith("dataset: median of")
    assert record == {"attention": "nas-scam-s", "genotype": str(Path(other).resolve()), "features": FEATURES,
                      "dropout": 0.1}
    attention, _, path = resolve_network_choice(None, None, run)  # what evaluation and inference then build
    assert attention == "nas-scam-s" and path == str(Path(other).resolve())
