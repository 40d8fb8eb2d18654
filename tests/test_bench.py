"""Tests of bench.py, the GPU report, on the CPU: its tiny mode runs every part (so that the
report cannot rot), its step is train_imagenet.py's, the compiled training step compiles one graph
per network call of the loss and none after its first step, the training step makes no host-device
synchronisation (on the meta device, where reading a value fails and copies from the host are
recorded), and its command line."""

import argparse
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bench
import dit
import soflow
import train_imagenet
import trainer
import unet


def test_tiny_report_runs_every_part(capsys):
    """One run of `python bench.py --tiny`: a row for every measurement, none failed or skipped,
    the compiled steps compile once (DiT with guidance: 4 graphs, the unguided U-Net: 3, the
    sampler: 1) and never again, the real run stops, resumes and checks out."""
    bench.main(["--tiny", "--device", "cpu"])
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out and "tiny" in out.splitlines()[0]
    rows = [r.split(" | ") for r in out.splitlines() if r.startswith("| ") and not r.startswith("| part")]
    assert all(len(r) == 10 for r in rows) and not any("FAILED" in r[-1] or "skipped" in r[-1] for r in rows)
    parts = [r[0][2:] for r in rows]
    assert parts == ["train"] * 3 + ["meanflow"] * 5 + ["sample"] * 3 + ["unet", "run"]
    for r in rows:
        if r[2] != "-" and r[0] != "| run":
            assert float(r[4]) > 0 and float(r[8]) >= 0                  # img/s, first step
    notes = {(r[0][2:], r[2]): r[-1] for r in rows}
    assert notes["train", "bf16, compiled, fused attention"].startswith("graphs 4, recompiled 0")
    assert notes["unet", "bf16, compiled, fused attention"].startswith("graphs 3, recompiled 0")
    assert notes["sample", "bf16, compiled"].startswith("graphs 1, recompiled 0")
    assert notes["train", "release: fp32 (TF32), eager, fused attention"] == " |"     # eager: no graph
    assert re.search(r"speed \d+\.\d\dx \(the authors' poster: .* 1\.19x, .* 0\.76x\); goal >= 1\.3x speed: (NOT )?met", out)
    run = next(r for r in rows if r[0] == "| run")
    assert run[-1] == "finite losses, checkpoint at 8, resumed at 4: ok |" and float(run[4]) > 0


def tiny_dit_step(dev, micro_batches=2, grad_clip=1.0):
    """train_imagenet.py's step (guidance, label dropout) on a one-block DiT, with accumulation."""
    with dev:
        net = dit.dit_from_name("T/2", depth=1, hidden_size=32, num_heads=2, input_size=8, num_classes=10)
        data = (torch.randn(8, 4, 8, 8), torch.full((8, 4, 8, 8), 0.1), torch.randint(0, 10, (8,)))
    C = argparse.Namespace(optimizer="adam", lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, grad_clip=grad_clip, seed=0)
    model = trainer.Objective(net, soflow.preset("imagenet", num_classes=10), bench.inputs)
    return model, net, C, [data] * micro_batches


class CopiesToDevice(TorchDispatchMode):
    """Records copies of CPU tensors to another device: .to(device) from pageable memory waits for the GPU."""
    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = args[1] if func is torch.ops.aten.copy_.default else args[0]
        copies = func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)
        if copies and src.device.type == "cpu" != out.device.type:
            self.copies.append(func)
        return out


def test_training_step_makes_no_host_device_sync():
    """On the meta device tensors hold no values: .item(), bool(), .tolist(), .cpu(), nonzero,
    boolean masks, unique... raise, as each of them would wait for a GPU; copies from the CPU are
    recorded (torch.tensor(data, device=...) escapes both: the GPU report counts the syncs).
    trainer.train_step (both losses' paths: guidance and label dropout; dropout, augmentation labels,
    RAdam and a float64 EMA; accumulation and gradient clipping) runs through without either; a step
    that reads a value fails."""
    meta, off = torch.device("meta"), torch.autocast("cpu", enabled=False)
    model, net, C, data = tiny_dit_step(meta)
    with CopiesToDevice() as mode:
        for step in range(2):
            logs = trainer.train_step(model, trainer.make_optimizer(C, net, meta), trainer.EMA(net, 0.9999), net, data,
                                      step, C, 0, 1, meta, off)
    assert {v.device for v in logs.values()} == {meta} and {"loss", "grad_norm", "ok"} <= set(logs)
    assert not mode.copies
    with CopiesToDevice() as mode:
        torch.zeros(3).to(meta)
    assert mode.copies == [torch.ops.aten._to_copy.default]

    with meta:
        u = unet.UNet(img_resolution=16, model_channels=16, channel_mult=(1,), num_blocks=1, noise_channels=16, emb_mult=1)
        images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    aug = lambda x: (x.float() / 127.5 - 1, None, {"augment_labels": torch.zeros(x.shape[0], 6, device=x.device)})
    C2 = argparse.Namespace(optimizer="radam", lr=1e-4, beta1=0.9, beta2=0.999, weight_decay=0.0, grad_clip=0.0, seed=0)
    assert u.config["dropout"] > 0
    with CopiesToDevice() as mode:
        trainer.train_step(trainer.Objective(u, soflow.preset("cifar10"), aug), trainer.make_optimizer(C2, u, meta),
                           trainer.EMA(u, 0.9999, 2, "float64"), u, [(images,)], 1, C2, 0, 1, meta, off)
    assert not mode.copies

    def reads_a_value(step, *mb):
        loss, logs = model(step, *mb)
        return loss * (logs["loss"].item() > 0), logs
    with pytest.raises(RuntimeError, match="meta"):
        trainer.train_step(reads_a_value, trainer.make_optimizer(C, net, meta), trainer.EMA(net, 0.9999), net, data, 0,
                           C, 0, 1, meta, off)


def test_compiled_step_has_one_static_graph_per_network_call():
    """trainer.compile_network: a guided step on 8 images calls the network on 10 images without
    gradient (v_uncond and v_guided), 6 with (flow matching), 2 with (consistency) and 2 without (its
    target): four graphs in the first step, each specialised to its size (plain torch.compile would
    recompile the second call with symbolic sizes, placeholders of SymInt), and none after it."""
    graphs = []

    def backend(gm, example_inputs):                    # Dynamo's captured graph, run as it is
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    cpu, off = torch.device("cpu"), torch.autocast("cpu", enabled=False)
    model, net, C, data = tiny_dit_step(cpu, micro_batches=1, grad_clip=0.0)
    objective = trainer.Objective(trainer.compile_network(net, backend), model.cfg, bench.inputs)
    opt, ema = trainer.make_optimizer(C, net, cpu), trainer.EMA(net, 0.9)
    for step in range(3):
        trainer.train_step(objective, opt, ema, net, data, step, C, 0, 1, cpu, off)
        assert len(graphs) == 4
    inputs = [n.meta.get("example_value") for g in graphs for n in g.graph.nodes if n.op == "placeholder"]
    assert not any(isinstance(u, torch.SymInt) for u in inputs)
    assert sorted(u.shape[0] for u in inputs if isinstance(u, torch.Tensor) and u.shape[1:] == (4, 8, 8)) == [2, 2, 6, 10]
    torch._dynamo.reset()


def test_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--tiny" in capsys.readouterr().out
    for argv, named in ((["--parts", "train,nope"], "--parts"), (["--peak_tflops", "-1"], "--peak_tflops"),
                        (["--peak_tflops", "nan"], "--peak_tflops"), (["--device", "tpu"], "--device")):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit, match="needs a CUDA GPU.*--tiny"):
        bench.main(["--device", "cpu"])


def test_inputs_are_train_imagenets():
    """The report's latents are drawn as train_imagenet.py draws them, the authors' train.py formula."""
    mean, std, y = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 8, 8), torch.tensor([3, 5])
    draws = []
    formula = lambda m, s, y: ((m + s * torch.randn(2, 4, 8, 8)) * 0.18215, y, None)
    for inputs in (bench.inputs, train_imagenet.inputs, formula):
        torch.manual_seed(1)
        draws.append(inputs(mean, std, y))
    assert all(torch.equal(x0, draws[0][0]) and labels is y and extra is None for x0, labels, extra in draws)
