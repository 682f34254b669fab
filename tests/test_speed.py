"""The speed levers of training: what they change and what they must not, and their benchmark."""

import doctest
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from examples.training import cpu
from examples.training.checkpoint import load_checkpoint_config
from examples.training.config import RunConfig, check_config, parse_args
from examples.training.cpu import parse_cpu_info, resolve_amp
from examples.training.loop import Trainer
from tests.test_training import script, tiny_config

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
cpu MHz\t\t: 2249.998
flags\t\t: fpu vme sse sse2 avx fma avx2 sha_ni

processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 avx fma avx2 sha_ni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz\t\t: 2699.998
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ICE_LAKE = "model name : Intel(R) Xeon(R) Platinum 8375C\nflags : avx fma avx2 avx512f avx512_vnni\n"


def test_cpu_flags_are_read_from_cpuinfo_text():
    epyc = parse_cpu_info(EPYC_AVX2)
    assert epyc.model == "AMD EPYC 7B12" and epyc.mhz == pytest.approx(2249.998)
    assert epyc.vector_flags == ["avx", "fma", "avx2"] and not epyc.native_bf16
    spr = parse_cpu_info(SAPPHIRE_RAPIDS)
    assert spr.nominal_ghz == 2.7 and spr.native_bf16
    assert {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"} <= set(spr.vector_flags)
    assert parse_cpu_info("").model == "unknown" and not parse_cpu_info("").flags


@pytest.mark.parametrize(
    ("text", "expected", "why"),
    [(EPYC_AVX2, False, "no native bf16"), (ICE_LAKE, False, "no native bf16"), (SAPPHIRE_RAPIDS, True, "amx_bf16")],
)
def test_amp_auto_follows_the_cpu_flags(text, expected, why):
    enabled, reason = resolve_amp("auto", torch.device("cpu"), parse_cpu_info(text))
    assert enabled is expected and why in reason and reason.startswith("auto:")
    # on and off are taken as given, whatever the CPU
    assert resolve_amp(True, torch.device("cpu"), parse_cpu_info(text))[0] is True
    assert resolve_amp(False, torch.device("cpu"), parse_cpu_info(text))[0] is False


def test_docstring_examples_of_the_cpu_module():
    result = doctest.testmod(cpu)
    assert result.attempted > 0 and result.failed == 0


def test_bad_amp_and_adam_settings_are_named():
    with pytest.raises(ValueError, match="--amp must be on, off or auto"):
        resolve_amp("sometimes", torch.device("cpu"))
    config = RunConfig()
    for section, name, value, flag in [
        ("train", "amp", 1, "--amp"),  # 1 is not True: the setting is on, off or auto
        ("optim", "adam_impl", "fast", "--adam-impl"),
        ("train", "channels_last", "yes", "--channels-last"),
        ("train", "cpu_allocator", "jemalloc", "--cpu-allocator"),
    ]:
        bad = replace(config, **{section: replace(getattr(config, section), **{name: value})})
        with pytest.raises(ValueError, match=flag):
            check_config(bad)


def test_the_speed_flags_parse_and_default_to_todays_behaviour():
    default, _ = parse_args([])
    assert default.train.amp is False and default.optim.adam_impl == "default"
    assert not (default.train.channels_last or default.train.compile or default.train.one_discriminator_pass)
    config, _ = parse_args(["--amp", "auto", "--adam-impl", "fused", "--channels-last", "--one-discriminator-pass"])
    assert config.train.amp == "auto" and config.optim.adam_impl == "fused"
    assert config.train.channels_last and config.train.one_discriminator_pass
    assert parse_args(["--amp"])[0].train.amp is True and parse_args(["--amp", "off"])[0].train.amp is False
    # the allocator changes no numerics, so it is on by default (see keep_freed_memory)
    assert default.train.cpu_allocator == "reuse"
    assert parse_args(["--cpu-allocator", "system"])[0].train.cpu_allocator == "system"


HEAP_CHECK = """
import ctypes, sys
import torch
from examples.training.cpu import keep_freed_memory

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2: every field a size_t
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "reuse":
    assert keep_freed_memory()[0]
size = 64 << 20
block = torch.ones(size // 4)  # 64 MiB, above glibc's largest automatic mmap threshold (32 MiB)
mapped = libc.mallinfo2().hblkhd >= size  # served by its own mmap?
del block
kept = libc.mallinfo2().fordblks >= size  # still in the heap, free for the next tensor?
print(mapped, kept)
"""


@pytest.mark.slow
def test_the_allocator_changes_no_number_at_the_demo_size(tmp_path):
    """Two demo-size steps with glibc's allocator as it is and with reuse: bit-identical checkpoints.

    Where memory comes from could in principle change a library's code path (alignment), so
    this is checked, at the size whose 42 MiB tensors the setting is for.
    """
    from safetensors.torch import load_file

    flags = ["--steps", "2", "--train-samples", "8", "--val-samples", "4", "--sample-every", "1000"]
    saved = {}
    for setting in ("system", "reuse"):
        out = tmp_path / setting
        done = script("examples/train_asap_tlam.py", *flags, "--cpu-allocator", setting, "--out", str(out))
        assert done.returncode == 0, done.stderr
        (checkpoint,) = (out / "checkpoints").glob("*.safetensors")
        saved[setting] = load_file(checkpoint)
    assert saved["system"].keys() == saved["reuse"].keys()
    assert all(torch.equal(saved["system"][name], saved["reuse"][name]) for name in saved["system"])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="glibc's malloc: Linux only")
def test_reuse_keeps_large_freed_tensors_in_the_heap():
    """With the setting a 64 MiB tensor comes from the heap and stays there when freed; without, it does not."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    seen = {}
    for setting in ("system", "reuse"):  # fresh processes: the setting is process-wide
        done = subprocess.run([sys.executable, "-c", HEAP_CHECK, setting], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        seen[setting] = done.stdout.split()
    assert seen == {"system": ["True", "False"], "reuse": ["False", "True"]}


def test_fp32_peak_estimate():
    # 2 cores x 2.25 GHz x 8 lanes (AVX2) x 2 FLOP per FMA x 2 FMA units
    assert cpu.fp32_peak_gflops(parse_cpu_info(EPYC_AVX2), cores=2, ghz=2.25) == pytest.approx(144.0)
    assert cpu.fp32_peak_gflops(parse_cpu_info(SAPPHIRE_RAPIDS), cores=1, ghz=2.0) == pytest.approx(128.0)


def lever_config(tmp_path, name: str, *, steps: int, optim: dict | None = None, **train) -> RunConfig:
    base = tiny_config(tmp_path / name)
    return replace(base, optim=replace(base.optim, **(optim or {})), train=replace(base.train, steps=steps, **train))


def steps_of(trainer: Trainer, count: int, *, frozen_spectral_norm: bool = False) -> list[dict[str, float]]:
    """``count`` training steps on the run's own data; optionally with D's power iteration frozen."""
    if frozen_spectral_norm:
        # In eval mode spectral norm uses its stored vectors without a power iteration; the
        # discriminator has no dropout or running statistics, so nothing else changes.
        trainer.discriminator.eval()
    batches = iter(trainer._loader())
    losses = []
    for _ in range(count):
        losses.append(trainer.train_step(next(batches)))
        trainer.step += 1
    return losses


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_one_discriminator_pass_is_the_two_pass_step_but_for_the_power_iteration(tmp_path):
    two = Trainer(lever_config(tmp_path, "two", steps=3), progress=False)
    one = Trainer(lever_config(tmp_path, "one", steps=3, one_discriminator_pass=True), progress=False)
    two_losses = steps_of(two, 3, frozen_spectral_norm=True)
    one_losses = steps_of(one, 3, frozen_spectral_norm=True)
    assert one_losses == two_losses  # bit for bit: the same losses, so the same maths
    assert same_parameters(one.generator, two.generator)
    assert same_parameters(one.discriminator, two.discriminator)


def test_one_discriminator_pass_runs_the_power_iteration_once_per_step(tmp_path):
    trainer = Trainer(lever_config(tmp_path, "one", steps=1, one_discriminator_pass=True), progress=False)
    calls = []
    for module in trainer.discriminator.modules():
        if type(module).__name__ == "_SpectralNorm":
            module.register_forward_hook(lambda *_: calls.append(1))
    steps_of(trainer, 1)
    spectral = sum(type(m).__name__ == "_SpectralNorm" for m in trainer.discriminator.modules())
    assert spectral and len(calls) == spectral  # the two-pass step computes each normalised weight twice


def test_foreach_adam_is_bit_identical_to_the_default(tmp_path):
    default = Trainer(lever_config(tmp_path, "default", steps=3), progress=False)
    foreach = Trainer(lever_config(tmp_path, "foreach", steps=3, optim={"adam_impl": "foreach"}), progress=False)
    assert steps_of(default, 3) == steps_of(foreach, 3)
    assert same_parameters(default.generator, foreach.generator)
    assert same_parameters(default.discriminator, foreach.discriminator)


def test_speed_options_round_trip_through_the_checkpoint_and_resume_exactly(tmp_path):
    levers = {"channels_last": True, "one_discriminator_pass": True}
    straight = Trainer(
        lever_config(tmp_path, "straight", steps=4, optim={"adam_impl": "fused"}, **levers), progress=False
    )
    straight.train()
    first = lever_config(tmp_path, "first", steps=2, optim={"adam_impl": "fused"}, checkpoint_every=2, **levers)
    Trainer(first, progress=False).train()
    checkpoint = Path(first.train.out) / "checkpoints" / "step_00000002.safetensors"
    saved = RunConfig.from_dict(load_checkpoint_config(checkpoint))
    assert saved.optim.adam_impl == "fused" and saved.train.channels_last and saved.train.one_discriminator_pass
    resumed = Trainer(replace(saved, train=replace(saved.train, steps=4)), resume=checkpoint, progress=False)
    assert all(group["fused"] for opt in (resumed.opt_g, resumed.opt_d) for group in opt.param_groups)
    resumed.train()
    assert same_parameters(straight.generator, resumed.generator)
    assert same_parameters(straight.discriminator, resumed.discriminator)


def test_the_optimizer_takes_the_configured_implementation_over_the_saved_one(tmp_path):
    first = lever_config(tmp_path, "first", steps=1, checkpoint_every=1)
    Trainer(first, progress=False).train()
    checkpoint = Path(first.train.out) / "checkpoints" / "step_00000001.safetensors"
    config = replace(first, optim=replace(first.optim, adam_impl="foreach"), train=replace(first.train, steps=2))
    resumed = Trainer(config, resume=checkpoint, progress=False)
    assert all(group["foreach"] for opt in (resumed.opt_g, resumed.opt_d) for group in opt.param_groups)


def test_amp_auto_is_resolved_once_and_kept_on_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "read_cpu_info", lambda: parse_cpu_info(EPYC_AVX2))
    first = lever_config(tmp_path, "auto", steps=1, amp="auto", checkpoint_every=1)
    trainer = Trainer(first, progress=False)
    assert trainer.config.train.amp_resolved is False and "no native bf16" in trainer.config.train.amp_reason
    trainer.train()
    written = json.loads((Path(first.train.out) / "config.json").read_text())["train"]
    assert (written["amp"], written["amp_resolved"]) == ("auto", False) and written["amp_reason"]
    # The run continues on a machine with native bf16: it keeps the precision it started with.
    monkeypatch.setattr(cpu, "read_cpu_info", lambda: parse_cpu_info(SAPPHIRE_RAPIDS))
    checkpoint = Path(first.train.out) / "checkpoints" / "step_00000001.safetensors"
    saved = RunConfig.from_dict(load_checkpoint_config(checkpoint))
    resumed = Trainer(replace(saved, train=replace(saved.train, steps=2)), resume=checkpoint, progress=False)
    assert resumed.config.train.amp_resolved is False
    # A new run on that machine turns it on.
    fresh = Trainer(lever_config(tmp_path, "fresh", steps=1, amp="auto"), progress=False)
    assert fresh.config.train.amp_resolved is True and "amx_bf16" in fresh.config.train.amp_reason


def test_one_discriminator_pass_is_refused_with_several_processes(tmp_path):
    from examples.training.distributed import DistInfo

    config = lever_config(tmp_path, "ddp", steps=1, one_discriminator_pass=True)
    with pytest.raises(ValueError, match="--one-discriminator-pass runs in a single process"):
        Trainer(config, dist=DistInfo(rank=0, world_size=2, local_rank=0), progress=False)


@pytest.mark.slow
def test_cli_prints_the_amp_choice_and_resumes_with_the_speed_flags(tmp_path):
    out = str(tmp_path / "run")
    tiny = ["--resolution", "32", "--train-samples", "8", "--val-samples", "2", "--dim", "8", "--depth", "1"]
    flags = [
        *tiny,
        "--batch-size",
        "2",
        "--lambda-vgg",
        "0",
        "--amp",
        "auto",
        "--adam-impl",
        "foreach",
        "--channels-last",
    ]
    done = script("examples/train_asap_tlam.py", *flags, "--steps", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "bfloat16 autocast: auto: " in done.stdout
    assert "CPU allocator: reuse: glibc" in done.stdout or "CPU allocator: unchanged" in done.stdout
    # the allocator changes no numerics: a resumed run may switch it
    done = script(
        "examples/train_asap_tlam.py", "--resume", "--amp", "auto", "--cpu-allocator", "system", "--steps", "2",
        "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout and "step 2" in done.stdout
    assert "CPU allocator: system, as asked" in done.stdout


@pytest.mark.slow
def test_the_benchmark_smoke_run_writes_its_json(tmp_path):
    from benchmarks import bench_train_step

    threads = torch.get_num_threads()
    try:
        bench_train_step.main(
            ["--smoke", "--settings", "demo", "--mergers", "tlam", "--generators", "asap", "--out-dir", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
    (path,) = tmp_path.glob("train_step_*_smoke.json")
    saved = json.loads(path.read_text())
    assert saved["mode"] == "smoke" and saved["cpu"]["model"] and "flags" in saved["cpu"]
    assert saved["torch"] == torch.__version__
    (case,) = saved["cases"]
    assert (case["setting"], case["threads"], case["merger"], case["generator"]) == ("demo", 2, "tlam", "asap")
    assert case["render_s_per_batch"] > 0
    variants = case["variants"]
    assert {"baseline", "all", "foreach_adam", "fused_adam", "channels_last", "one_d_pass", "bf16_auto"} <= set(
        variants
    )
    assert "compile" not in variants  # compiling takes minutes: not in smoke mode
    for v in variants.values():
        assert len(v["step_s"]) == 2 and all(s > 0 for s in v["step_s"]) and v["ratio"] > 0
    assert variants["baseline"]["ratio"] == 1.0
    (breakdown,) = saved["breakdown"]
    assert breakdown["setting"] == "demo" and set(breakdown["share"]) == {
        "merger", "generator", "discriminator_adam_rest"
    }  # fmt: skip
    assert all(len(v) == 2 and min(v) > 0 for v in breakdown["seconds"].values())
    assert saved["cpu_allocator"] == "reuse"
    peak = saved["tlam_peak"]
    assert peak["flop"] > 0 and peak["gflops"] > 0 and "FMA" in peak["peak_formula"]
    shares = peak["operator_shares"]
    assert set(shares) == {"matrix products", "attention", "other"} and sum(shares.values()) == pytest.approx(1)
    assert shares["matrix products"] > 0 and shares["attention"] > 0  # the profiler's names are the ones looked for
    assert path.with_suffix(".md").read_text().startswith("# Training step on the CPU")
    assert path.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_compiled_networks_train_in_one_discriminator_pass(tmp_path):
    # Two backwards run through the one discriminator graph; compiled backwards must allow it.
    config = lever_config(tmp_path, "compiled", steps=2, compile=True, channels_last=True, one_discriminator_pass=True)
    config = replace(config, model=replace(config.model, generator="spade"))
    losses = steps_of(Trainer(config, progress=False), 2)
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)


def test_main_job_time_reads_the_jobs_own_log_and_estimates_400_steps():
    from benchmarks.main_job_time import ISAS, estimate_job, run_case, summarise

    flags = ["--resolution", "8", "--batch-size", "1", "--train-samples", "4", "--val-samples", "4"]
    flags += ["--sample-every", "1000", "--checkpoint-every", "1000"]
    run = run_case(flags, ISAS["avx2"], steps=75, threads=1, extra=[])
    assert [step for step, _ in run["logged"]] == [25, 50, 75]  # cumulative seconds from metrics.jsonl
    assert len(run["intervals_s_per_step"]) == 2 and run["steady_step_s"] > 0
    assert 0 < run["startup_s"] < run["wall_s"]
    assert estimate_job(run) == pytest.approx(run["startup_s"] + run["first_interval_s"] + 375 * run["steady_step_s"])
    half = {**run, "steady_step_s": run["steady_step_s"] / 2}
    rows = summarise([{"case": "big", "isa": "x", **run}, {"case": "small", "isa": "x", **half}], "big")
    assert rows[0]["ratio_to_default"] == 1.0 and rows[1]["ratio_to_default"] < 1.0


def test_the_avx2_cap_is_recognised_and_leaves_bf16_out(monkeypatch):
    from benchmarks import bench_train_step

    for name in bench_train_step.AVX2_CAP:
        monkeypatch.delenv(name, raising=False)
    assert not bench_train_step.avx2_capped()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not bench_train_step.avx2_capped()  # all three libraries, or it is not an AVX2-only code path
    for name, value in bench_train_step.AVX2_CAP.items():
        monkeypatch.setenv(name, value)
    assert bench_train_step.avx2_capped()
    assert not {"bf16_auto", "compile"} & set(bench_train_step.levers_that_apply())
    assert "channels_last" in bench_train_step.levers_that_apply()
