"""Speed and memory of training and prediction, with the machine's own peak throughput for scale.

Prints, measured in this run: fp32 and bf16 matmul throughput; the FLOPs of a default training step
(``torch.utils.flop_counter``); training-step times on real her2st sections (180 and 283 spots) in fp32 and
with bf16 autocast, each also as a fraction of the matching peak; the self-distillation passes batched with
the clean pass against one after the other; an epoch over the four shared sections; prediction throughput;
peak RSS while training on the four shared sections (paper settings; with gradient checkpointing; also with a
fixed glibc mmap threshold; also with memory-mapped images; also with ``step_in_backward``; and with the
``'fast'`` preset without gradient clipping, which ``step_in_backward`` needs); and a training step on a
synthetic 5,000-spot Visium-like section.

With ``--device cuda`` the throughput, the training steps, prediction and the Visium-like step run on the GPU
(peak GPU memory instead of RSS); peak RSS is a CPU figure and is skipped there.

    python benchmarks/speed.py            # everything
    python benchmarks/speed.py --only steps predict
    python benchmarks/speed.py --device cuda
    python benchmarks/speed.py --only steps --precision fp32   # a CPU without bfloat16 instructions
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(os.environ.get("HIST2ST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"))
CASES = ("throughput", "steps", "predict", "rss", "visium")
#: Where the throughput, step, prediction and Visium cases run; set by ``--device``.
DEVICE = torch.device("cpu")
#: The precisions measured (name, bf16 autocast); ``--precision`` keeps one of them.
PRECISIONS = (("fp32", False), ("bf16", True))


def synchronize() -> None:
    """Wait for the GPU's queued work, so that wall-clock times include it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_gb() -> float:
    """Peak resident set size of this process since start or since :func:`reset_peak_rss`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def reset_peak_rss() -> None:
    """Start the peak of :func:`peak_rss_gb` again from the current RSS (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    if DEVICE.type == "cuda":
        n, reps = 8192, 20
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    torch.nn.functional.linear(a, b)
    synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(a, b)
    synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def device_batch(section) -> dict:
    """The model's tensors of a prepared section, on the benchmark's device."""
    from st_hist2st._data._dataset import section_batch

    return {k: v.to(DEVICE) for k, v in section_batch(section).items()}


def sections():
    import st_hist2st as hist2st
    from st_hist2st._data._section import prepare_sections

    adata = hist2st.datasets.her2st(ROOT)
    genes = (ROOT / "genes_785.txt").read_text().split()
    prepared = prepare_sections(adata, "fullres", genes=genes, crop_size=112, show_progress_bar=False)
    return {s.library_id: device_batch(s) for s in prepared}


def make_plan(**settings):
    """The paper's network and training, with the distillation passes batched with the clean pass (the figures
    in docs/model.md were measured so) unless ``batch_passes=False``."""
    from st_hist2st.nn._plan import Hist2STPlan
    from st_hist2st.nn._training import preset

    arch, training = preset("paper", **{"batch_passes": True, **settings})
    return Hist2STPlan(arch, training.to_dict()).to(DEVICE)


def step_time(plan, batch, optimizer, bf16: bool, reps: int = 3, warmup: bool = True) -> float:
    """Median time of ``reps`` training steps, after one untimed step when ``warmup``."""
    times = []
    for _ in range(reps + warmup):
        synchronize()
        t0 = time.perf_counter()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            loss = plan.losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] if warmup else times)


def step_flops(plan, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        plan.losses(batch)["loss"].backward()
    plan.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def throughput() -> dict:
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_gflops(dtypes[name]) for name, _ in PRECISIONS}
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"matmul throughput on this machine ({where}): "
        + ", ".join(f"{name} {peak:.0f} GFLOP/s" for name, peak in peaks.items())
    )
    return peaks


def steps(peaks: dict) -> None:
    data = sections()
    plan = make_plan()
    optimizer = torch.optim.Adam(plan.parameters(), lr=1e-5)
    for lib in ("C3", "B4"):
        batch = data[lib]
        n = batch["patches"].shape[0]
        flops = step_flops(plan, batch)
        for name, bf16 in PRECISIONS:
            t = step_time(plan, batch, optimizer, bf16)
            print(
                f"train step {lib} ({n} spots, 5 distillation passes, batched) {name}: {t:.3g} s; {flops / 1e9:.0f} GFLOP "
                f"-> {flops / t / 1e9:.0f} GFLOP/s = {flops / t / 1e9 / peaks[name]:.0%} of the {name} peak"
            )
    sequential = make_plan(batch_passes=False)
    seq_opt = torch.optim.Adam(sequential.parameters(), lr=1e-5)
    t_seq = step_time(sequential, data["C3"], seq_opt, False)
    t_bat = step_time(plan, data["C3"], optimizer, False)
    print(f"distillation passes C3 fp32: batched with the clean pass {t_bat:.3g} s, one after the other {t_seq:.3g} s")
    for name, bf16 in PRECISIONS:
        total = sum(step_time(plan, b, optimizer, bf16, reps=1) for b in data.values())
        print(
            f"epoch over the four shared sections ({sum(b['patches'].shape[0] for b in data.values())} spots) "
            f"{name}: {total:.3g} s"
        )


def predict() -> None:
    data = sections()
    plan = make_plan()
    net = plan.net.eval()
    batch = data["C3"]
    n = batch["patches"].shape[0]
    for name, bf16 in PRECISIONS:
        times = []
        for _ in range(4):
            synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
                net(batch["patches"], batch["positions"], batch["edge_index"])
            synchronize()
            times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        print(f"predict C3 ({n} spots) {name}: {t:.3f} s = {n / t:.0f} spots/s")


def current_rss_gb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


#: Peak-RSS variants: label, training settings, environment, whether the full-resolution images are memory-mapped
#: from .npy files (as a lazily read SpatialData or zarr image would be) instead of held in memory. glibc raises
#: its mmap threshold as large blocks are freed, so later activations come from a heap that fragments; a fixed
#: threshold returns them at once.
MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}
RSS_VARIANTS = {
    "paper settings": ({}, {}, False),
    "gradient_checkpointing=True": ({"gradient_checkpointing": True}, {}, False),
    "gradient_checkpointing=True, MALLOC_MMAP_THRESHOLD_=131072": ({"gradient_checkpointing": True}, MMAP, False),
    "the above, full-resolution images memory-mapped": ({"gradient_checkpointing": True}, MMAP, True),
    "the above, step_in_backward=True": ({"gradient_checkpointing": True, "step_in_backward": True}, MMAP, True),
    "the above, preset='fast' with gradient_clip=None": (
        {"gradient_checkpointing": True, "step_in_backward": True, "preset": "fast", "gradient_clip": None},
        MMAP,
        True,
    ),
    "paper settings as above (step_in_backward), precision='bf16-mixed'": (
        {"gradient_checkpointing": True, "step_in_backward": True, "precision": "bf16-mixed"},
        MMAP,
        True,
    ),
    "preset='fast' as above (gradient_clip=None), precision='bf16-mixed'": (
        {
            "gradient_checkpointing": True,
            "step_in_backward": True,
            "preset": "fast",
            "gradient_clip": None,
            "precision": "bf16-mixed",
        },
        MMAP,
        True,
    ),
}


def memory_map_images(adata, folder: Path) -> None:
    """Replace each full-resolution image in ``adata.uns['spatial']`` by a read-only memory map of a copy on disk."""
    for lib, entry in adata.uns["spatial"].items():
        path = folder / f"{lib}.npy"
        np.save(path, entry["images"]["fullres"])
        entry["images"]["fullres"] = np.load(path, mmap_mode="r")


def rss(label: str) -> None:
    import st_hist2st as hist2st

    settings, _, mapped = RSS_VARIANTS[label]
    adata = hist2st.datasets.her2st(ROOT)
    tmp = tempfile.TemporaryDirectory(prefix="hist2st-rss-")
    if mapped:
        memory_map_images(adata, Path(tmp.name))
    images_gb = sum(
        e["images"]["lowres"].nbytes + (0 if mapped else e["images"]["fullres"].nbytes)
        for e in adata.uns["spatial"].values()
    )
    images_gb /= 1e9
    gc.collect()
    held = current_rss_gb()
    reset_peak_rss()
    genes = (ROOT / "genes_785.txt").read_text().split()
    t0 = time.perf_counter()
    hist2st.tl.fit(adata, "fullres", genes=genes, crop_size=112, max_epochs=1, show_progress_bar=False, **settings)
    precision = settings.get("precision", "fp32")
    print(
        f"tl.fit, 1 epoch on the four shared sections, {precision}, {label}: {time.perf_counter() - t0:.1f} s "
        f"including patch extraction; peak RSS during fit {peak_rss_gb():.2f} GB; before fit {held:.2f} GB held, of "
        f"which the H&E images in adata.uns {images_gb:.2f} GB"
    )
    tmp.cleanup()


VISIUM_ENV = MMAP


def visium() -> None:
    import st_hist2st as hist2st
    from st_hist2st._data._section import prepare_sections

    adata = hist2st.datasets.synthetic(n_libraries=1, shape=(50, 100), n_genes=785, layout="visium", spot_step=24)
    section = prepare_sections(adata, "hires", genes=list(adata.var_names), show_progress_bar=False)[0]
    batch = device_batch(section)
    before = peak_rss_gb()
    # the paper settings otherwise; on a GPU also without checkpointing, which it has the memory for
    variants = (True, False) if DEVICE.type == "cuda" else (True,)
    for checkpointing in variants:
        plan = make_plan(n_pos=256, attn_dropout=0.0, gradient_checkpointing=checkpointing)
        optimizer = torch.optim.Adam(plan.parameters(), lr=1e-5)
        what = (
            f"synthetic Visium-like section, {section.n_spots} spots, hexagonal graph "
            f"({section.edge_index.shape[1]} edges), paper settings with attn_dropout=0 (fused attention), "
            f"{'with' if checkpointing else 'without'} gradient checkpointing"
        )
        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats(DEVICE)
        first = step_time(plan, batch, optimizer, False, reps=1, warmup=False)
        if DEVICE.type == "cuda":
            per_step = {name: step_time(plan, batch, optimizer, bf16, reps=2) for name, bf16 in PRECISIONS}
            print(
                f"{what}, {torch.cuda.get_device_name(DEVICE)}: first step {first:.2f} s, then "
                + ", ".join(f"{name} {t:.2f} s" for name, t in per_step.items())
                + " per step; peak GPU memory "
                f"{torch.cuda.max_memory_allocated(DEVICE) / 1e9:.1f} GB"
            )
        else:
            print(
                f"{what}, fp32, {VISIUM_ENV}: {first:.1f} s for the first training step; peak RSS "
                f"{peak_rss_gb():.2f} GB (data {before:.2f} GB)"
            )
        del plan, optimizer


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=CASES, default=list(CASES))
    parser.add_argument("--device", default="cpu", help="'cpu' or a CUDA device such as 'cuda' or 'cuda:1'")
    parser.add_argument(
        "--precision",
        choices=("both", "fp32", "bf16"),
        default="both",
        help="'fp32' alone on a CPU without bfloat16 instructions, where bf16 is emulated and takes hours",
    )
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="paper settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    global PRECISIONS
    PRECISIONS = tuple(p for p in PRECISIONS if args.precision in ("both", p[0]))
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA GPU here; leave --device out to measure the CPU.")
    warnings.filterwarnings("ignore")
    if args.case:
        {
            "steps": lambda: steps(throughput()),
            "predict": predict,
            "rss": lambda: rss(args.variant),
            "visium": visium,
            "throughput": throughput,
        }[args.case]()
        return
    for case in args.only:
        if case == "throughput" and "steps" in args.only:
            continue  # steps measures the throughput itself, in the same process
        if case == "rss" and DEVICE.type == "cuda":
            print("peak RSS is measured on the CPU: run it without --device")
            continue
        # each case in its own process, so that peak RSS figures are its own
        variants = RSS_VARIANTS if case == "rss" else {"": ({}, VISIUM_ENV if case == "visium" else {}, False)}
        for label, (_, env, *_) in variants.items():
            command = [sys.executable, __file__, "--case", case, "--device", args.device, "--precision", args.precision]
            command += ["--variant", label] if label else []
            subprocess.run(command, check=True, env={**os.environ, **env})


if __name__ == "__main__":
    main()
