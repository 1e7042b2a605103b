"""What pam-monai does when a private or undocumented part of MONAI, Ignite, PyTorch or MLflow it
relies on changes under it (a user upgrades a library): a public API where one does the job, else a
clear error or warning naming the library's version and what degrades, never a silent wrong result.

Each test simulates the internal gone or changed (monkeypatched) and checks that message or fallback.
"""

from __future__ import annotations

import monai.utils.misc as monai_misc

from pam_monai.engines import kept_process_settings


def test_kept_process_settings_restores_monais_seed_through_its_public_api(monkeypatch):
    """MONAI's global seed was put back by assigning its private ``monai.utils.misc._seed``: a MONAI
    that kept the seed elsewhere would have every ``Compose`` made after the block seeded with the
    run's seed, silently. ``set_determinism`` / ``get_seed`` are the public pair."""
    store = {"seed": None}  # a MONAI whose seed is not in ``_seed``

    def set_determinism(seed=None, use_deterministic_algorithms=None, additional_settings=None):
        store["seed"] = seed

    monkeypatch.setattr(monai_misc, "set_determinism", set_determinism)
    monkeypatch.setattr(monai_misc, "get_seed", lambda: store["seed"])
    with kept_process_settings():
        monai_misc.set_determinism(seed=3)  # what a run's setup_run does
    assert monai_misc.get_seed() is None


def test_the_experiment_runner_resets_torch_compile_through_its_public_api(monkeypatch):
    """The runner forgot ``torch.compile``'s caches between bundles with the private
    ``torch._dynamo.reset``: a PyTorch without it failed after the first bundle with an
    AttributeError. ``torch.compiler.reset`` is the public one."""
    import torch._dynamo
    import torch.compiler

    from pam_monai.experiments.runner import _reset_compiler

    calls = []
    monkeypatch.delattr(torch._dynamo, "reset")
    monkeypatch.setattr(torch.compiler, "reset", lambda: calls.append(1))
    _reset_compiler()
    assert calls == [1]


def test_triton_is_found_without_pytorchs_private_check(monkeypatch):
    """``compile_by_default`` asks PyTorch's private ``torch.utils._triton`` whether Triton is
    there: a PyTorch that moved it read as one without Triton, and the bundles trained uncompiled
    on every GPU, warning that this PyTorch lacks Triton. Now whether ``triton`` imports decides."""
    import sys
    import types

    from pam_monai.engines.fast_path import _has_triton

    monkeypatch.setitem(sys.modules, "torch.utils._triton", None)  # its import fails
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    assert _has_triton()
    monkeypatch.setitem(sys.modules, "triton", None)
    assert not _has_triton()


def test_a_changed_ignite_handler_table_fails_naming_ignite_and_the_feature():
    """The bundles' error clean-up (put first in line at ``EXCEPTION_RAISED``), ``CaseMetrics``
    (first at ``EPOCH_COMPLETED``) and the search for attached handlers read Ignite's private
    ``Engine._event_handlers``: an Ignite that renamed it failed with "'Engine' object has no
    attribute '_event_handlers'" as the handlers were attached, one that changed its entries with
    an unpacking error. Now the error names pytorch-ignite, its version and what needs it."""
    from importlib.metadata import version

    import pytest
    from ignite.engine import Engine

    from pam_monai.engines import CloseWritersOnError
    from pam_monai.engines.cleanup import _attached

    engine = Engine(lambda engine, batch: None)
    del engine._event_handlers
    with pytest.raises(
        RuntimeError, match=rf"pytorch-ignite {version('pytorch-ignite')}: Engine._event_handlers"
    ):
        CloseWritersOnError().attach(engine)
    engine = Engine(lambda engine, batch: None)
    engine._event_handlers = {"started": [("handler", ())]}  # entries of another shape
    with pytest.raises(RuntimeError, match="finding the handlers attached"):
        _attached(engine)


def _run_with_bar(bar, epochs: int = 2) -> None:
    from ignite.engine import Engine

    engine = Engine(lambda engine, batch: {"loss": 0.5})
    bar.attach(engine)
    engine.run([0, 1, 2], max_epochs=epochs)


def test_a_changed_ignite_progress_bar_warns_and_is_ignites_own(monkeypatch, tmp_path):
    """The bundles' progress bar replaces Ignite's private ``ProgressBar._reset`` and reads the
    attributes Ignite's reads there: an Ignite without ``_reset`` lost the bar's own timing and
    label without a word, one that renamed an attribute failed at the first epoch's start with an
    AttributeError. Now a warning names pytorch-ignite, its version and the name, and the training
    runs with Ignite's bar as it is."""
    from importlib.metadata import version

    import pytest
    from ignite.handlers import ProgressBar as IgniteBar

    from pam_monai.engines import ProgressBar

    with open(tmp_path / "log", "w", encoding="utf-8") as out:
        monkeypatch.delattr(IgniteBar, "_reset")
        with pytest.warns(
            RuntimeWarning, match=rf"pytorch-ignite {version('pytorch-ignite')}: ProgressBar._reset"
        ):
            ProgressBar(file=out)
        monkeypatch.undo()

        made = []
        ignites_init = IgniteBar.__init__

        def renamed(self, *args, **kwargs):  # an Ignite keeping the bar's format under another name
            ignites_init(self, *args, **kwargs)
            self.format = self.__dict__.pop("bar_format")

        def ignites_reset(self, total):
            made.append(total)
            self.pbar = self.pbar_cls(total=total, file=out)

        monkeypatch.setattr(IgniteBar, "__init__", renamed)
        monkeypatch.setattr(IgniteBar, "_reset", ignites_reset)
        with pytest.warns(RuntimeWarning, match="ProgressBar.bar_format .*the bar is Ignite's own"):
            bar = ProgressBar(file=out)
        _run_with_bar(bar)
    assert made == [3, 3]


def test_override_ids_unchecked_for_want_of_monais_locals_is_said(monkeypatch):
    """``check_override_ids`` reads the config files and overrides from the local variables of
    MONAI's ``create_workflow`` (``_args``, ``config_file``), found on the call stack: a MONAI that
    renamed them left every ``--<id>`` unchecked, a typo ignored, without a word. Now a warning names
    MONAI, its version and the check that is off."""
    import monai.bundle.scripts
    import pytest

    from pam_monai.engines.config_checks import _workflow_overrides

    def create_workflow(config_file=None, **kwargs):  # a MONAI whose arguments are kept under other names
        arguments = dict(kwargs, config_file=config_file)
        del config_file
        return _workflow_overrides(), arguments

    monkeypatch.setattr(monai.bundle.scripts, "create_workflow", create_workflow)
    with pytest.warns(
        RuntimeWarning, match=r"monai \S+: the local variables _args and config_file .*override ids"
    ):
        found, _ = create_workflow(config_file="configs/train.json", epochs=2)
    assert found is None


def test_a_monai_that_renamed_the_tensorboard_writer_gets_one_made_at_once(monkeypatch, tmp_path):
    """The bundles' ``TensorBoardStatsHandler`` makes its writer at the first write by turning
    MONAI's private ``TensorBoardHandler._writer`` into a property: a MONAI keeping the writer under
    another name wrote to a placeholder object, an AttributeError at the first log. Now the writer is
    made at once, as MONAI's own is, with a warning naming MONAI and its version; ``close`` closes it."""
    import pytest
    from monai.handlers.tensorboard_handlers import TensorBoardHandler
    from torch.utils.tensorboard import SummaryWriter

    from pam_monai.engines import TensorBoardStatsHandler

    def renamed(self, summary_writer=None, log_dir="./runs"):
        self.writer = SummaryWriter(log_dir=log_dir) if summary_writer is None else summary_writer
        self.internal_writer = summary_writer is None

    monkeypatch.setattr(TensorBoardHandler, "__init__", renamed)
    with pytest.warns(RuntimeWarning, match=r"monai \S+: TensorBoardHandler._writer"):
        handler = TensorBoardStatsHandler(log_dir=str(tmp_path))
    assert isinstance(handler.writer, SummaryWriter)
    handler.writer.add_scalar("loss", 1.0, 1)
    handler.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_a_run_of_its_own_is_made_without_monais_private_set_experiment(monkeypatch, tmp_path):
    """``TrackingEvery(end_run=True)`` gives an ``MLFlowHandler`` a run of its own through MONAI's
    private ``_set_experiment``: a MONAI without it failed at the training's start with an
    AttributeError. Now MLflow's public client makes the experiment there."""
    import importlib.util

    import pytest
    from monai import __version__ as monai_version
    from packaging.version import Version

    if importlib.util.find_spec("mlflow") is None or Version(monai_version) < Version("1.6.1"):
        pytest.skip("needs the mlflow extra (setup.cfg): mlflow, monai>=1.6.1")
    import mlflow
    from monai.handlers import MLFlowHandler

    from pam_monai.engines import TrackingEvery

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    artifacts = (tmp_path / "artifacts").as_uri()
    handler = MLFlowHandler(
        tracking_uri=uri,
        experiment_name="train",
        run_name="mine",
        iteration_log=False,
        artifact_location=artifacts,
    )
    monkeypatch.delattr(MLFlowHandler, "_set_experiment")
    TrackingEvery._new_run(handler)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("train")
    assert experiment.artifact_location == artifacts  # the handler's, as MONAI's own passes it
    (run,) = client.search_runs([experiment.experiment_id])
    assert (run.info.run_id, run.info.run_name) == (handler.cur_run.info.run_id, "mine")
    handler.close()
    # a deleted experiment is refused, naming it, as MONAI's own refuses it
    client.delete_experiment(experiment.experiment_id)
    again = MLFlowHandler(tracking_uri=uri, experiment_name="train", run_name="mine", iteration_log=False)
    with pytest.raises(ValueError, match="MLflow experiment 'train' is deleted: restore it"):
        TrackingEvery._new_run(again)
    assert again.cur_run is None


def test_a_grid_run_that_raises_reports_its_own_error_where_monai_keeps_its_objects_elsewhere(monkeypatch):
    """After each bundle the experiment runner closes the TensorBoard writers the workflow made,
    read from ``parser.ref_resolver.resolved_content`` (MONAI's, not documented): with a MONAI that
    renamed them, a run that raised reported an AttributeError from that clean-up instead of its own
    error. Now its own error goes on, with a warning naming MONAI and what is left open."""
    import pytest

    from pam_monai.experiments.runner import _Bundle

    class Workflow:  # a MONAI workflow without ref_resolver
        parser = object()

        def initialize(self):
            pass

        def run(self):
            raise ValueError("the run's own error")

    monkeypatch.setattr(_Bundle, "_workflow", lambda self, files, run_id, overrides: Workflow())
    with pytest.warns(RuntimeWarning, match=r"monai \S+: ConfigParser.ref_resolver.resolved_content"):
        with pytest.raises(ValueError, match="the run's own error"):
            _Bundle(None, None)._run([], "training", {})


def test_instance_norms_are_found_without_pytorchs_private_base_class(monkeypatch):
    """``normalises_with_input_statistics`` (the networks' smallest input) tested for PyTorch's
    private ``nn.modules.instancenorm._InstanceNorm``: a PyTorch without it failed to build every
    network with an AttributeError. The public classes are named now, the lazy ones too."""
    from torch import nn

    from pam_monai.networks.blocks.convolutions import normalises_with_input_statistics

    monkeypatch.delattr(nn.modules.instancenorm, "_InstanceNorm")
    for norm in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
        assert normalises_with_input_statistics(nn.Sequential(nn.Conv2d(1, 2, 3), norm(2)))
        assert not normalises_with_input_statistics(norm(2, track_running_stats=True))
    for norm in (nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d):
        assert normalises_with_input_statistics(norm(affine=False, track_running_stats=False))
    assert not normalises_with_input_statistics(nn.BatchNorm2d(2))


def test_bundle_root_without_monais_config_root_path_warns_and_falls_back(monkeypatch, tmp_path):
    """``bundle_root`` takes the bundle's folder from the running ``ConfigWorkflow``'s
    ``config_root_path`` (MONAI's, undocumented): a MONAI without it stopped every bundle with an
    AttributeError. Now a warning names MONAI and its version, and the folder is found as outside a
    workflow (here: the working folder holds ``configs/``)."""
    import pytest
    from monai.bundle import ConfigWorkflow

    from pam_monai.engines.workflow import bundle_root

    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["python"])

    def evaluated_by(self):  # as MONAI's workflow evaluates a config's ``$`` expression
        return bundle_root()

    workflow = object.__new__(ConfigWorkflow)  # a workflow without config_root_path
    workflow.properties = {}
    with pytest.warns(RuntimeWarning, match=r"monai \S+: ConfigWorkflow.config_root_path"):
        assert evaluated_by(workflow) == "."


def test_stop_every_process_on_error_without_pytorchs_private_store_names_pytorch(monkeypatch, caplog):
    """``StopEveryProcessOnError`` announces a failed process through the process group's store,
    PyTorch's private ``distributed_c10d._get_default_store``: a PyTorch without it logged only
    "no process group store (module ... has no attribute ...)". Now the warning names PyTorch, its
    version and what is lost; the training goes on."""
    import torch.distributed as dist

    from pam_monai.engines import StopEveryProcessOnError

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.delattr(dist.distributed_c10d, "_get_default_store")
    with caplog.at_level("WARNING", logger="pam_monai"):
        assert StopEveryProcessOnError._store() is None
    assert f"torch {torch_version()}: torch.distributed.distributed_c10d._get_default_store" in caplog.text
    assert "a failed process is not announced" in caplog.text


def torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def test_the_flip_bench_without_pytorchs_private_gpu_sleep_names_pytorch(monkeypatch):
    """The bench's ``flip_wait`` queues GPU work with PyTorch's private ``torch.cuda._sleep``: a
    PyTorch without it failed after the warm-up with an AttributeError. Now it refuses first, naming
    PyTorch, its version and the measure it cannot take."""
    import re

    import pytest
    import torch

    from pam_monai.bench.pipeline import flip_wait

    monkeypatch.delattr(torch.cuda, "_sleep")
    with pytest.raises(
        RuntimeError, match=rf"torch {re.escape(torch_version())}: torch.cuda._sleep .*flip_wait"
    ):
        flip_wait()


def test_channels_last_without_pytorchs_private_module_apply(monkeypatch):
    """``fast_network(channels_last=True)`` converted the weights with ``Module._apply``, private in
    PyTorch (``Module.to`` refuses ``channels_last`` for 3-D networks' 5-D weights): a PyTorch
    without it failed at the fast path's setup with an AttributeError. Now public calls do it, to
    the same ``Parameter`` objects (an optimizer made before still holds them)."""
    import torch
    from torch import nn

    from pam_monai.engines import fast_network

    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv3d(4, 4, 3), nn.BatchNorm2d(4), nn.Linear(3, 3))
    params = list(net.parameters())
    monkeypatch.delattr(nn.Module, "_apply")
    fast_network(net, channels_last=True)
    assert list(net.parameters()) == params and all(a is b for a, b in zip(net.parameters(), params))
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[1].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not net[1].weight.is_contiguous()


def test_kept_process_settings_leaves_a_fresh_cudas_seed_as_the_caller_set_it(monkeypatch):
    """Putting MONAI's seed back with ``set_determinism`` calls ``torch.manual_seed``, which seeds
    CUDA too: a random seed where the caller had no MONAI seed. With CUDA not yet started (its
    state could not be saved), the caller's ``torch.manual_seed(7)``, which CUDA takes at its start,
    was replaced by that random seed (before, by the run's): the caller's GPU work after
    ``run_experiment`` was not reproducible. CUDA now takes the caller's seed, as it would have."""
    import torch

    from pam_monai.engines import setup_run

    seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeds.append(int(seed)))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    torch.manual_seed(7)
    assert seeds == [7]  # what CUDA takes at its start
    with kept_process_settings():
        setup_run(seed=3)  # a run's
    assert seeds[-1] == 7, seeds
