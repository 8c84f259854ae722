# Helpers shared by the rules of several stages: the threads and resources of every rule (from
# the config's `resources` and `slurm` sections), and the sampling mode of the score and
# samples rules.

import os

_RESOURCE_DEFAULTS = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpus": 0, "partition": None}


def rule_setting(rule, key):
    res = config["resources"]
    for source in (res.get(rule, {}), res.get("default", {}), _RESOURCE_DEFAULTS):
        if source.get(key) is not None:
            return source[key]
    return None


def rule_threads(rule):
    return rule_setting(rule, "threads")


def rule_resources(rule):
    """Resources of a rule, to spread into its `resources`: memory, run time, GPUs, and the SLURM
    partition/account from the config or from EDM2_SLURM_PARTITION / EDM2_SLURM_ACCOUNT."""
    out = {"mem_mb": rule_setting(rule, "mem_mb"), "runtime": rule_setting(rule, "runtime")}
    gpus = rule_setting(rule, "gpus")
    if gpus:
        out["gpu"] = gpus
    slurm = config["slurm"]
    partition = rule_setting(rule, "partition")
    if partition is None and gpus:
        partition = slurm["gpu_partition"]
    partition = partition or slurm["partition"] or os.environ.get("EDM2_SLURM_PARTITION")
    account = slurm["account"] or os.environ.get("EDM2_SLURM_ACCOUNT")
    if partition:
        out["slurm_partition"] = partition
    if account:
        out["slurm_account"] = account
    return out


def sampling_mode_arg():
    """`--eager` when score.eager is set (score and samples rules), else nothing: the sampling fast
    path (compiled CUDA graphs) is on by default on CUDA and off on CPU (edm2.sample.fast)."""
    return "--eager" if config["score"]["eager"] else ""
