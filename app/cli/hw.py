"""`mixtral-desk hw`: what this machine offers for running models."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.format import human_bytes
from app.cli.options import add_rpc_option
from app.core.planning import hardware


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "hw",
        help="show GPUs, memory and the llama.cpp backend",
        description="Show GPU name and free/total memory (NVML on CUDA; Metal's working-set limit on Apple "
        "Silicon), system RAM, and which backend the installed llama.cpp was built with.",
    )
    parser.add_argument("--json", action="store_true", help="print as JSON")
    add_rpc_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.core.planning.fit import ram_bandwidth_gbps

    report = hardware.probe(args.rpc)
    bandwidth = ram_bandwidth_gbps()
    if args.json:
        print(json.dumps({**report.to_json(), "ram_bandwidth_gbps": bandwidth}, indent=2))
        return 0
    print(f"System:   {report.system} {report.machine}, {report.cpu_count} CPU threads")
    print(
        f"RAM:      {human_bytes(report.ram_total_bytes)} total, {human_bytes(report.ram_available_bytes)} free, "
        f"~{bandwidth:.0f} GB/s measured copy bandwidth"
    )
    if report.gpus:
        for gpu in report.gpus:
            limit = " (Metal working-set limit)" if gpu.backend == "metal" else ""
            known = "" if gpu.bandwidth_known else " (bandwidth assumed)"
            print(
                f"GPU {gpu.index}:    {gpu.name} [{gpu.backend}] {human_bytes(gpu.free_bytes)} free of "
                f"{human_bytes(gpu.total_bytes)}{limit}, {gpu.bandwidth_gbps:.0f} GB/s{known}"
            )
    else:
        print("GPU:      none found")
    offload = "can offload to the GPU" if report.llama_supports_gpu_offload else "CPU only"
    rpc = ", RPC workers" if report.llama_supports_rpc else ""
    print(f"llama.cpp: {report.llama_cpp_version} built for {report.llama_backend} ({offload}{rpc})")
    for worker in report.rpc_workers:
        for device in worker.devices:
            print(
                f"Worker:   {device.label} (RPC {worker.version}) {human_bytes(device.free_bytes)} free of "
                f"{human_bytes(device.total_bytes)}"
            )
    for note in report.notes:
        print(f"note: {note}")
    return 0
