"""torch.compile over every method: one graph, no recompilation as training progresses, the same step.

On a tiny binary ResNet (one block per stage, 8x8 inputs): every method's training forward and
frozen evaluation forward trace into a single graph (``torch._dynamo.explain``); a compiled
training step gives eager's loss and gradients while the schedules move (RBNN: the estimator's
t/k and the rotations' re-fit) and is compiled once per program, never per epoch; and
``--compile`` trains the same weights as an eager run and saves a plain state dict.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from cmim_dense import create_model
from cmim_dense.methods import list_recipes
from cmim_dense.models.resnet import ARCHS, ArchSpec

TINY = "tiny_compile_test"


@pytest.fixture(scope="module", autouse=True)
def tiny_arch():
    ARCHS.add(TINY, ArchSpec((1, 1, 1, 1), "cifar", "one block per stage, for tracing tests"))
    yield
    ARCHS.remove(TINY)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(TINY, method, num_classes=4)


def breaks(explained) -> list[str]:
    return [str(b.reason).splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize("method", [recipe.name for recipe in list_recipes()])
def test_every_method_compiles_to_one_graph_training_and_frozen(method: str) -> None:
    """Catches a graph break in a 1-bit primitive: a generator argument (the standardizations' std),
    a tensor read as a Python number (RBNN's re-fit marker), the frozen weight cache's identity and
    version checks (once it holds the weights of an earlier forward).  RBNN's first training
    forward re-fits the rotations (SVDs) inside the graph."""
    model = tiny(method)
    model.set_progress(0.3)
    x = torch.randn(2, 3, 8, 8)
    training = torch._dynamo.explain(model.train())(x)
    with torch.no_grad():
        model.eval()(x)  # an earlier frozen forward: the binary weights are cached
        frozen = torch._dynamo.explain(model)(x)
    assert (training.graph_break_count, training.graph_count) == (0, 1), breaks(training)
    assert (frozen.graph_break_count, frozen.graph_count) == (0, 1), breaks(frozen)


@pytest.mark.parametrize("method, backend, programs", [("rbnn", "eager", 2), ("irnet", "aot_eager", 1)])
def test_compiled_step_follows_the_schedules_without_recompiling(method: str, backend: str, programs: int) -> None:
    """A compiled training step gives eager's loss and gradients at every step while the schedules
    move, and is compiled once per program for the whole run.  IR-Net's EDE moves t/k every epoch
    (compiled through AOTAutograd, as TorchInductor does: forward and backward graphs); RBNN moves
    its estimator's t/k and re-fits its rotations on the first training step after each new
    progress: two programs (with and without the re-fit), each compiled once.  Catches schedule
    values passed as Python numbers (a recompilation per epoch, or values frozen into the graph)
    and a re-fit decided by a Python float."""
    eager, compiled = tiny(method), tiny(method)
    compiled.load_state_dict(eager.state_dict())
    compiles: list[int] = []
    compiler = torch._dynamo.lookup_backend(backend)

    def counting(graph, example_inputs):
        compiles.append(len(graph.graph.nodes))
        return compiler(graph, example_inputs)

    step = torch.compile(compiled, backend=counting)
    x = torch.randn(4, 3, 8, 8)
    for progress in (0.0, 0.0, 0.5, 0.5):  # two steps per "epoch"
        results = []
        for model, forward in ((eager, eager), (compiled, step)):
            model.set_progress(progress)
            model.train().zero_grad()
            loss = forward(x).logsumexp(1).mean()
            loss.backward()
            results.append((loss.detach(), [p.grad for p in model.parameters()]))
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.05 * p.grad
        (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
        torch.testing.assert_close(compiled_loss, eager_loss)
        for expected, got in zip(eager_grads, compiled_grads):
            torch.testing.assert_close(got, expected)
        torch.testing.assert_close(compiled.state_dict(), eager.state_dict())  # RBNN: the re-fitted rotations
    assert len(compiles) == programs, compiles


def test_compile_flag_trains_the_same_weights_and_saves_a_plain_state_dict(tmp_path, monkeypatch) -> None:
    """``--compile`` (torch.compile of the training network; here with dynamo's eager backend, the
    wiring not TorchInductor) trains what an eager run trains, over two epochs of a moving
    schedule, and its checkpoints hold the module's own keys (no ``_orig_mod.``); the flag is not
    a result setting (a --resume may add or drop it)."""
    from cmim_dense.checkpoint_io import load_checkpoint
    from cmim_dense.engine import resolve_config, run_pretraining

    compile_ = torch.compile
    wrapped: list[torch.nn.Module] = []

    def eager_backend(model, **kwargs):
        wrapped.append(model)
        return compile_(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_backend)
    settings = {"arch": TINY, "epochs": 2, "synthetic_samples": 20, "synthetic_val_samples": 5, "image_size": 16,
                "batch_size": 20, "progress_bar": False}
    for name, flag in (("eager", False), ("compiled", True)):
        config = resolve_config("irnet", {**settings, "compile": flag, "out": str(tmp_path / name)})
        run_pretraining(config)
    assert len(wrapped) == 1 and "compile" not in config.settings()
    eager, compiled = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("eager", "compiled"))
    assert list(compiled) == list(eager) and not any("_orig_mod" in key for key in compiled)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], msg=key)
