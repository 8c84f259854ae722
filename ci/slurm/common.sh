# Settings shared by ci/slurm/start.sh and stop.sh (sourced by both).
STATE="${EDM2_SLURM_STATE:-/run/edm2-ci-slurm}"  # the PIDs of the daemons start.sh started
CONF_DIR=/etc/slurm                              # where start.sh writes slurm.conf and gres.conf
MARKER="written by ci/slurm/start.sh"            # the first line of the files it wrote
