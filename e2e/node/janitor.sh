#!/usr/bin/env bash
# The node's janitor: the one place that knows how to take a test node off this machine again.
#   janitor.sh RUN_DIR BIN_DIR
# Started by e2e/src/node.rs before anything of the node exists, in a session of its own (so it is
# not killed with the test). It takes the machine-wide node lock (a node's ports, bridge, iptables
# chains and cgroups are per machine), sweeps what a run that died without its janitor left behind,
# says "ready" on stdout, then waits for its stdin to close: the test closes it when the node
# stops, and the kernel closes it when the test dies however it dies. Then it removes everything
# the node made and releases the lock. A second run waits on the lock until that is done.
set -uo pipefail

run_dir=${1:?usage: janitor.sh RUN_DIR BIN_DIR}
bin_dir=${2:?usage: janitor.sh RUN_DIR BIN_DIR}
lock=/run/lumigo-e2e-node.lock
# Every run directory lives under this root, so a sweep finds those of dead runs.
runs_root=$(dirname "$run_dir")

exec 9>"$lock"
if ! flock -n 9; then
    echo "waiting for another test run's node to stop (lock $lock)" >&2
    flock 9
fi

log() { echo "janitor: $*" >&2; }

kill_node_processes() {
    # Containers first (every pod lives under the kubepods cgroups), then the runc shims that
    # outlive containerd by design, then any component of ours still running.
    local procs pids
    for procs in $(find /sys/fs/cgroup/*/kubepods* -name cgroup.procs 2>/dev/null); do
        pids=$(cat "$procs" 2>/dev/null) && [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
    done
    pkill -KILL -f "^$bin_dir/" 2>/dev/null
    pkill -KILL -x containerd-shim-runc-v2 2>/dev/null
    sleep 0.2
}

remove_cgroups() {
    # Deepest first: a cgroup directory can only go once its children are gone.
    local dir
    for dir in $(find /sys/fs/cgroup/*/kubepods* -depth -type d 2>/dev/null); do
        rmdir "$dir" 2>/dev/null
    done
}

unmount_under() { # unmount_under DIR: every mount point below DIR, deepest first
    local point
    for point in $(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -l "$point" 2>/dev/null
    done
}

remove_network() {
    local link chain table
    # Pod veths are peers of the bridge; deleting the bridge does not delete them.
    for link in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
        ip link del "$link" 2>/dev/null
    done
    ip link del cni0 2>/dev/null
    for table in filter nat mangle; do
        # Jumps into our chains go first, then the chains themselves.
        iptables -t "$table" -S 2>/dev/null | grep -E -- '-j (KUBE-|CNI-)' | sed 's/^-A/-D/' |
            while read -r rule; do eval iptables -t "$table" "$rule" 2>/dev/null; done
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ { print $2 }'); do
            iptables -t "$table" -F "$chain" 2>/dev/null
        done
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ { print $2 }'); do
            iptables -t "$table" -X "$chain" 2>/dev/null
        done
    done
    # kube-proxy also writes nftables tables of its own in nftables mode; it runs in iptables mode
    # here, but a probe at start-up creates them.
    for table in kube-proxy; do
        nft delete table ip "$table" 2>/dev/null
        nft delete table ip6 "$table" 2>/dev/null
    done
    # Network namespaces of pods (containerd mounts them under /var/run/netns, /run/netns).
    unmount_under /run/netns
    unmount_under /var/run/netns
    rm -f /run/netns/cni-* 2>/dev/null
}

clean_run() { # clean_run DIR: everything one run made
    local dir=$1
    kill_node_processes
    unmount_under "$dir"
    unmount_under /var/lib/kubelet
    unmount_under /run/containerd
    remove_cgroups
    remove_network
    local key
    for key in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables; do
        [[ -f $dir/sysctl.orig/${key//\//.} ]] && cat "$dir/sysctl.orig/${key//\//.}" >"/proc/sys/$key"
    done
    rm -rf "$dir" /var/lib/kubelet/device-plugins /var/lib/kubelet/pod-resources /var/lib/cni/networks/lumigo-e2e
    rmdir /var/lib/kubelet "$runs_root" 2>/dev/null
    # runc's state and the shims' sockets and fifos go to /run/containerd whatever containerd's own
    # state directory is; the whole directory is ours unless a system containerd lives there.
    [[ -S /run/containerd/containerd.sock ]] || rm -rf /run/containerd
    rm -rf /var/log/containers /var/log/pods
}

# Leftovers of runs whose janitor itself was killed (e.g. the machine stopped mid-run).
for stale in "$runs_root"/run-*; do
    [[ -d $stale && $stale != "$run_dir" ]] || continue
    log "removing the leftovers of an earlier run: $stale"
    clean_run "$stale"
done
clean_run "$run_dir" 2>/dev/null
# What the node changes of the machine's settings (e2e/src/node.rs), to give back as it was.
mkdir -p "$run_dir/sysctl.orig"
for key in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables; do
    [[ -f /proc/sys/$key ]] && cat "/proc/sys/$key" >"$run_dir/sysctl.orig/${key//\//.}"
done
echo ready

# Blocks until the test closes its end or dies.
while read -r _; do :; done
clean_run "$run_dir"
log "node removed"
