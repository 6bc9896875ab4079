//! A node that cannot start says why, at once, and leaves nothing behind. (A test binary of its
//! own: a node holds the machine-wide node lock while it lives, so it cannot share a process with
//! the shared cluster of `node.rs`.)

use std::net::{Ipv4Addr, TcpListener};

use lumigo_e2e::Cluster;

#[tokio::test]
async fn a_port_the_kubelet_needs_is_named_when_it_is_taken() {
    let _taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 10250))
        .expect("port 10250 is free before the test");
    let error = match Cluster::start().await {
        Ok(_) => panic!("a node started although its kubelet port was taken"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("port 10250 (kubelet) is in use"), "{error}");
    // The janitor had started (the check comes after it took the node lock): it is done, so the
    // lock is free again and the run's directory gone.
    let run_dir = format!("/var/lib/lumigo-e2e/run-{}", std::process::id());
    assert!(
        !std::path::Path::new(&run_dir).exists(),
        "{run_dir} was removed"
    );
    let lock = std::process::Command::new("flock")
        .args(["--nonblock", "/run/lumigo-e2e-node.lock", "true"])
        .status()
        .unwrap();
    assert!(lock.success(), "the node lock was released");
}
