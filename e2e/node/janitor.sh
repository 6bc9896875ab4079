#!/usr/bin/env bash
# The node's janitor: the one place that knows how to take a test node off this machine again.
#   janitor.sh RUN_DIR BIN_DIR POD_CIDR SERVICE_CIDR
# Started by e2e/src/node.rs before anything of the node exists, in a session of its own (so it is
# not killed with the test). It takes the machine-wide node lock (a node's ports, bridge, iptables
# chains and cgroups are per machine), sweeps what a run that died without its janitor left behind,
# saves the kernel settings the node's components change, gives the kubelet a journaled filesystem
# (see below), fences the cluster's networks in so that nothing addressed to them ever leaves the
# machine, says "ready", then waits for its stdin to close: the test closes it when the node stops,
# and the kernel closes it when the test dies however it dies. Then it removes everything the node
# made, restores the settings and releases the lock. A second run waits on the lock until that is
# done.
set -uo pipefail

run_dir=${1:?usage: janitor.sh RUN_DIR BIN_DIR POD_CIDR SERVICE_CIDR}
bin_dir=${2:?usage: janitor.sh RUN_DIR BIN_DIR POD_CIDR SERVICE_CIDR}
pod_cidr=${3:?usage: janitor.sh RUN_DIR BIN_DIR POD_CIDR SERVICE_CIDR}
service_cidr=${4:?usage: janitor.sh RUN_DIR BIN_DIR POD_CIDR SERVICE_CIDR}
lock=/run/lumigo-e2e-node.lock
lock_wait=1800
# Every run directory lives under this root, so a sweep finds those of dead runs.
runs_root=$(dirname "$run_dir")
# The test reads one line from our stdout; after that nobody reads it, and writing to a closed pipe
# must not kill the janitor halfway through its work.
trap '' PIPE
exec 3>&1 1>&2

# Kernel settings the kubelet (setupKernelTunables) and kube-proxy change on a node, and the
# node's own (forwarding, bridged traffic through iptables): saved before, restored after.
sysctls=(net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables
    net/ipv4/conf/all/route_localnet net/netfilter/nf_conntrack_tcp_timeout_established
    net/netfilter/nf_conntrack_tcp_timeout_close_wait kernel/panic kernel/panic_on_oops
    vm/overcommit_memory vm/panic_on_oom kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# The chain that keeps pod traffic on the machine (see fence_in).
egress_chain=LUMIGO-E2E-EGRESS

exec 9>"$lock"
if ! flock -n 9; then
    echo "waiting for another test run's node to stop (lock $lock, at most $lock_wait s)"
    flock -w "$lock_wait" 9 || { echo "janitor: another run held $lock for $lock_wait s"; exit 1; }
fi

log() { echo "janitor: $*"; }

kill_node_processes() {
    # Containers first (every pod lives under the kubepods cgroups), then the runc shims, which
    # outlive containerd by design (containerd starts them by their path in BIN_DIR).
    local procs pids
    for procs in $(find /sys/fs/cgroup/*/kubepods* -name cgroup.procs 2>/dev/null); do
        pids=$(cat "$procs" 2>/dev/null) && [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
    done
    pkill -KILL -f "^$bin_dir/" 2>/dev/null
}

remove_cgroups() {
    # A cgroup can only go once its processes have been reaped and its children are gone: deepest
    # first, a few rounds while killed processes finish exiting.
    local dir round
    for round in 1 2 3 4 5 6 7 8 9 10; do
        for dir in $(find /sys/fs/cgroup/*/kubepods* -depth -type d 2>/dev/null); do
            rmdir "$dir" 2>/dev/null
        done
        compgen -G '/sys/fs/cgroup/*/kubepods*' >/dev/null || return 0
        sleep 0.2
    done
    log "cgroups left behind: $(compgen -G '/sys/fs/cgroup/*/kubepods*' | tr '\n' ' ')"
}

unmount_under() { # unmount_under DIR: every mount point below DIR, deepest first
    local point
    for point in $(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -l "$point" 2>/dev/null
    done
}

remove_chains() { # remove_chains TOOL: our jumps, then our chains, in every table TOOL knows
    local tool=$1 table chain rule
    for table in filter nat mangle; do
        "$tool" -t "$table" -S 2>/dev/null | grep -E -- "-j (KUBE-|CNI-|$egress_chain)" | sed 's/^-A/-D/' |
            while read -r rule; do eval "$tool" -t "$table" "$rule" 2>/dev/null; done
        for chain in $("$tool" -t "$table" -S 2>/dev/null | awk -v e="$egress_chain" '/^-N / && ($2 ~ /^(KUBE-|CNI-)/ || $2 == e) { print $2 }'); do
            "$tool" -t "$table" -F "$chain" 2>/dev/null
        done
        for chain in $("$tool" -t "$table" -S 2>/dev/null | awk -v e="$egress_chain" '/^-N / && ($2 ~ /^(KUBE-|CNI-)/ || $2 == e) { print $2 }'); do
            "$tool" -t "$table" -X "$chain" 2>/dev/null
        done
    done
}

remove_network() {
    local link
    # Pod veths are peers of the bridge; deleting the bridge does not delete them.
    for link in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
        ip link del "$link" 2>/dev/null
    done
    ip link del cni0 2>/dev/null
    remove_chains iptables
    remove_chains ip6tables
    rm -rf /var/lib/cni/networks/lumigo-e2e /var/lib/cni/results/lumigo-e2e-*
}

# Nothing addressed to the cluster's networks may leave the machine: a Service IP that kube-proxy
# has not (or no longer) translated, or a pod address of no pod, would otherwise follow the default
# route. And pods reach this machine and each other only: what they send elsewhere is dropped.
# In mangle/POSTROUTING, where every packet, forwarded or the host's own, has its final address and
# interface: a blackhole route would stop the host's own connections to Service IPs before
# kube-proxy's DNAT, and in filter/OUTPUT a DNATed packet still shows its first route's interface.
fence_in() {
    iptables -t mangle -N "$egress_chain"
    iptables -t mangle -A "$egress_chain" -d "$service_cidr" -j DROP
    iptables -t mangle -A "$egress_chain" -d "$pod_cidr" ! -o cni0 -j DROP
    iptables -t mangle -A "$egress_chain" -s "$pod_cidr" ! -o cni0 -j DROP
    iptables -t mangle -I POSTROUTING -j "$egress_chain"
}

save_sysctls() { # save_sysctls DIR
    local key
    mkdir -p "$1/sysctl.orig"
    for key in "${sysctls[@]}"; do
        [[ -f /proc/sys/$key ]] && cat "/proc/sys/$key" >"$1/sysctl.orig/${key//\//.}"
    done
}

restore_sysctls() { # restore_sysctls DIR
    local key saved
    for key in "${sysctls[@]}"; do
        saved="$1/sysctl.orig/${key//\//.}"
        [[ -f $saved ]] && cat "$saved" >"/proc/sys/$key" 2>/dev/null
    done
}

clean_run() { # clean_run DIR: everything one run made
    local dir=$1
    kill_node_processes
    unmount_under "$dir"
    unmount_under /var/lib/kubelet
    remove_cgroups
    remove_network
    restore_sysctls "$dir"
    # --one-file-system: a mount that would not go must not be followed into.
    rm -rf --one-file-system "$dir" /var/lib/kubelet/device-plugins /var/lib/kubelet/pod-resources
    rmdir /var/lib/kubelet "$runs_root" 2>/dev/null
    rm -rf /var/log/containers /var/log/pods
    # runc's state and the shims' sockets and fifos go to /run/containerd whatever containerd's own
    # state directory is; the whole directory is ours unless a system containerd lives there.
    [[ -S /run/containerd/containerd.sock ]] || rm -rf --one-file-system /run/containerd
}

# Leftovers of runs whose janitor itself was killed (e.g. the machine stopped mid-run).
for stale in "$runs_root"/run-*; do
    [[ -d $stale && $stale != "$run_dir" ]] || continue
    log "removing the leftovers of an earlier run: $stale"
    clean_run "$stale"
done
clean_run "$run_dir" 2>/dev/null
mkdir -p "$run_dir"
# Keys and kubeconfigs of cluster-admin users will live here.
chmod 700 "$run_dir"
# The kubelet's directory (the pods' volumes) on an ext4 of its own, with a journal, as a node's
# disk has. Without a journal ext4 passes over inodes freed in the last minutes when it allocates
# new ones: on such a root (this VM's), every init container that copied the payload after the
# previous pod's emptyDir was deleted spent 0.6 to 1.4 s of CPU looking for free inodes, against
# 0.08 s on a journaled ext4. A sparse file: it takes the disk its files take. Where it cannot be
# made, the directory stays on the root, and the node runs as before.
kubelet_image="$run_dir/kubelet.ext4"
mkdir -p "$run_dir/kubelet"
if truncate -s 16G "$kubelet_image" && mkfs.ext4 -q -F -O has_journal "$kubelet_image" &&
    mount -o loop "$kubelet_image" "$run_dir/kubelet"; then
    log "the kubelet's directory is a journaled ext4 ($kubelet_image)"
else
    log "the kubelet's directory stays on $(df --output=fstype "$run_dir" | tail -1): no loop mount"
    rm -f "$kubelet_image"
fi
save_sysctls "$run_dir"
fence_in
echo ready >&3
exec 3>&-

# Blocks until the test closes its end or dies.
while read -r _; do :; done
clean_run "$run_dir"
log "node removed"
