"""Stage 2 for models larger than one GPU (70B): SFT with the weights sharded over processes (PyTorch FSDP2).

`sft_fsdp` spawns one process per GPU (on a CPU machine, a given number of gloo processes: the tests) from the
calling process, so on SLURM one task of one node runs the cell as before and starts its own workers. Each
process runs `train.sft` on its share of every global batch, with the same schedule and loss; rank 0 gathers
the fine-tuned weights and saves them as an ordinary Hugging Face directory, which the later stages load.

Why torch's `fully_shard` rather than accelerate's FSDP plugin: accelerate 1.15 turns FSDP on only for GPU-like
process groups (on CPU processes `prepare` falls back to DDP), so the CPU tests could not run the code the
cluster runs. Its FSDP2 path does what `_sharded_model` does: `fully_shard` each decoder layer (structure.py finds
them, for any architecture) and the model, and load the weights on rank 0 only (its `cpu_ram_efficient_loading`).

Precision: under `train.precision=fp32_master` (the default) a bf16/fp16 model's sharded parameters, gradients and
AdamW state are fp32 and FSDP2's MixedPrecisionPolicy all-gathers the parameters in the model's dtype for forward and
backward and reduce-scatters the gradients in fp32; rank 0 saves the gathered masters rounded to the model's dtype.
`pure` shards and steps the model's own dtype.

Checkpoints and signals: each worker runs `sft` with the cell's checkpoint directory, so every rank saves its
shards every `checkpoint.every` steps and all of them at the same step when any is signalled. The main process
holds SIGTERM and SIGUSR2 (SLURM's stop, submitit's time-out and preemption), passes them to the workers, waits
until they have saved and ended, then hands the signal to submitit, which requeues the job; the requeued cell
resumes from that checkpoint.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from transformers import AutoConfig, AutoModelForCausalLM

from .config import ConfigError
from .models import DTYPES
from .structure import decoder_layers
from .train import HALF, DeferredSignals, SFTJob, TrainLog, sft


def sft_fsdp(job: SFTJob, base: str | Path, dtype: str, tokenizer, out_dir: Path) -> TrainLog:
    """Run `job` on the model at `base` (a Hugging Face directory or hub id, its weights in `dtype`) over
    `job.train.fsdp_processes` processes and save the fine-tuned model to `out_dir`; return the training log. The job's
    curve runs after every step on every rank (its forward passes are collective), so it must be picklable; what it
    returns is logged as in `sft`. With `job.checkpoint_dir`, resume from its checkpoint if any, as `sft` does."""
    gpus = torch.cuda.device_count()
    processes = job.train.fsdp_processes or gpus
    if processes < 1 or (gpus and processes > gpus):
        raise ConfigError(f"train.fsdp_processes={processes} is not allowed: expected 1..{gpus} (one per GPU)" if gpus else
                          "train.strategy=fsdp on a machine without GPUs needs train.fsdp_processes (gloo processes on the CPU)")
    # A file rendezvous, not a TCP port: cells sharing a node cannot collide.
    with tempfile.TemporaryDirectory() as rendezvous, DeferredSignals() as signals:
        # Daemonic: the workers end with the cell, whatever ends it.
        workers = torch.multiprocessing.start_processes(_worker, nprocs=processes, daemon=True, join=False, args=(
            processes, f"file://{rendezvous}/store", job, str(base), dtype, tokenizer, Path(out_dir)), start_method="spawn")
        passed_on = 0
        try:
            while not workers.join(timeout=1):
                for signum in signals.caught[passed_on:]:  # SLURM may signal only this process: the workers must save
                    for process in workers.processes:
                        if process.is_alive():
                            os.kill(process.pid, signum)
                passed_on = len(signals.caught)
        except Exception:
            signals.forward()  # the workers stopped for a signal and saved: submitit's handler requeues the job
            raise
    return TrainLog(**json.loads((Path(out_dir) / "train_log.json").read_text()))


def _worker(rank: int, world: int, init_method: str, job: SFTJob, base: str, dtype: str, tokenizer, out_dir: Path) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))  # the cell's cores, shared by its processes
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        model = _sharded_model(base, dtype, rank, device, job.train.precision, job.train.fsdp_cpu_offload)
        log = sft(model, tokenizer, job)
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:  # in the model's dtype: fp32 masters rounded, as one process hands them back (train.MasterWeights)
            model.save_pretrained(out_dir, state_dict={k: v.to(DTYPES[dtype]) for k, v in weights.items()})
            model.config.dtype = DTYPES[dtype]  # save_pretrained wrote the masters' float32 into config.json
            model.config.save_pretrained(out_dir)
            (out_dir / "train_log.json").write_text(json.dumps(asdict(log)))
        dist.barrier()  # the ranks leave together, once rank 0 has saved
    finally:
        dist.destroy_process_group()
    # Leave without Python's finalization: a C++ thread torn down there aborted a worker that had finished and saved
    # (std::terminate, in 2 of 17 resumed runs of the signalled test here, once on CI), which failed the cell.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def mixed_precision(dtype: str, precision: str) -> tuple[torch.dtype, MixedPrecisionPolicy]:
    """The dtype of the sharded parameters (what AdamW steps) and FSDP's casting policy for them."""
    if precision == "fp32_master" and DTYPES[dtype] in HALF:
        return torch.float32, MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    return DTYPES[dtype], MixedPrecisionPolicy()


def _sharded_model(base: str, dtype: str, rank: int, device: torch.device, precision: str, cpu_offload: bool = False):
    """The model at `base`, each decoder layer and the rest sharded over the ranks. Only rank 0 reads the weights
    (a copy per process of a 70B model would not fit in a node's memory); the others build the model on the meta
    device and receive their shards from rank 0. Under fp32_master the weights are read as fp32 (an exact widening).
    With `cpu_offload` the shards, their gradients and AdamW's state live in node memory and AdamW steps on the CPU;
    the GPUs hold only the layers being computed (a 70B model's 16 bytes per parameter exceed 8 x 80 GB)."""
    param_dtype, policy = mixed_precision(dtype, precision)
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    if rank == 0:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=param_dtype)
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=param_dtype)
    weights = model.state_dict() if rank == 0 else {}
    for layer in decoder_layers(model)[1]:
        fully_shard(layer, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mp_policy=policy, offload_policy=offload)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # sft() weights each rank's examples by their share of the global batch, so the gradients are summed
            # (factor 1), with SUM, which gloo has (it lacks AVG).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    if rank > 0:
        model.to_empty(device=device)
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():  # not in the state dict (e.g. the rotary frequencies): rank 0 has them
        dist.broadcast(buffer, src=0)
    return model
