"""Launcher variables -> ranks (docs/method.md#distributed): torchrun, one SLURM task per rank, a plain process."""

from edm2.distributed import first_slurm_host, resolve_env


def test_torchrun_variables_win():
    env = resolve_env(
        {
            "RANK": "3",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "8",
            "MASTER_ADDR": "n1",
            "MASTER_PORT": "29500",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "2",
        }
    )
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port) == (3, 1, 8, "n1", 29500)
    assert env.launcher == "torchrun"


def test_one_slurm_task_per_rank_is_mapped_to_ranks():
    env = resolve_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "8",
            "SLURM_JOB_ID": "4242",
            "SLURM_NODELIST": "gpu[007-010,012]",
        }
    )
    assert (env.rank, env.local_rank, env.world_size, env.master_addr) == (5, 1, 8, "gpu007")
    assert env.launcher == "slurm" and env.master_port == 15000 + 4242 % 20000
    env = resolve_env(
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7", "SLURM_NODELIST": "a,b"}
    )
    assert env.master_addr == "10.0.0.7" and env.local_rank == 0


def test_a_single_slurm_task_or_no_launcher_is_rank_0_of_1_on_a_free_port():
    for environ in ({}, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}):
        env = resolve_env(environ)
        assert (env.rank, env.world_size, env.master_addr, env.launcher) == (0, 1, "localhost", "single")
        assert 0 < env.master_port < 65536


def test_first_slurm_host():
    assert first_slurm_host("node01") == "node01"
    assert first_slurm_host("node[01-04]") == "node01"
    assert first_slurm_host("gpu[7,9-12],cpu3") == "gpu7"
    assert first_slurm_host("alpha,beta") == "alpha"
