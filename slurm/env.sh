# Source me (bash/zsh): points the SLURM client commands at the cluster that
# slurm/start-cluster.sh runs, and puts its `sacct` shim ahead of /usr/bin/sacct.
#   source slurm/env.sh
# Honours PERILN_SLURM_DIR (the cluster's state directory), like the scripts.

export PERILN_SLURM_DIR="${PERILN_SLURM_DIR:-/tmp/periln-slurm}"
# Absolute, since the daemons run from / and slurm.conf holds these paths.
case "$PERILN_SLURM_DIR" in /*) ;; *) PERILN_SLURM_DIR="$PWD/$PERILN_SLURM_DIR" ;; esac
export SLURM_CONF="$PERILN_SLURM_DIR/slurm.conf"

# Remove any earlier copy of the shim dir, then prepend it: the shim must come
# before /usr/bin, whose sacct fails without slurmdbd.
_periln_slurm_path=":$PATH:"
_periln_slurm_path="${_periln_slurm_path//":$PERILN_SLURM_DIR/bin:"/:}"
_periln_slurm_path="${_periln_slurm_path#:}"
_periln_slurm_path="${_periln_slurm_path%:}"
export PATH="$PERILN_SLURM_DIR/bin${_periln_slurm_path:+:$_periln_slurm_path}"
unset _periln_slurm_path
