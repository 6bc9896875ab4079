//! The policy module is compiled by a child process running the operator's own executable,
//! and the operator loads the machine code it hands back. Compiling runs megabytes of compiler
//! code and heap that would otherwise stay resident in the operator for its whole life; the
//! child takes them away when it exits.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lumigo_policy_host::{EngineOptions, PolicyEngine};

/// The hidden subcommand the child runs: the module on stdin, its machine code on stdout.
pub const SUBCOMMAND: &str = "precompile-policy";
/// Set in the child's environment: a process that has it never starts a compiler itself, so a
/// wrong executable can not multiply.
const CHILD_MARKER: &str = "LUMIGO_POLICY_COMPILER_CHILD";
/// Compiling takes well under a second (a few in a debug build); a child still running after
/// this is stuck.
const DEADLINE: Duration = Duration::from_secs(60);
/// The machine code of the module is about 1 MiB; more is not what was asked for.
const MAX_OUTPUT: u64 = 64 << 20;
const MAX_ERROR_OUTPUT: u64 = 64 << 10;

/// Where the policy module gets compiled.
#[derive(Debug, Clone)]
pub struct PolicyCompiler {
    executable: Option<PathBuf>,
}

impl PolicyCompiler {
    /// In this process: the compiler's code and heap then stay resident in it.
    pub fn in_process() -> Self {
        PolicyCompiler { executable: None }
    }

    /// In a child process running this process's own executable image, whichever file is at
    /// its path now.
    ///
    /// # Safety
    /// This process must be the operator binary: the child's output is loaded as native code.
    pub unsafe fn own_executable() -> Self {
        PolicyCompiler {
            executable: Some(PathBuf::from("/proc/self/exe")),
        }
    }

    /// In a child process running `executable`.
    ///
    /// # Safety
    /// `executable` must be the operator binary built from the same sources with the same
    /// dependencies as this process (e.g. cargo's `CARGO_BIN_EXE_` beside a test), or fail
    /// without output: its output is loaded as native code.
    pub unsafe fn child(executable: PathBuf) -> Self {
        PolicyCompiler {
            executable: Some(executable),
        }
    }
}

/// The engine for `module`, compiled where `compiler` says; a child process that fails is
/// replaced by compiling here, with a warning: the webhook still works, it just keeps the
/// compiler's memory.
pub fn engine(
    module: &[u8],
    compiler: &PolicyCompiler,
    options: EngineOptions,
) -> Result<PolicyEngine, lumigo_policy_host::Error> {
    engine_within(module, compiler, options, DEADLINE)
}

fn engine_within(
    module: &[u8],
    compiler: &PolicyCompiler,
    options: EngineOptions,
    deadline: Duration,
) -> Result<PolicyEngine, lumigo_policy_host::Error> {
    let executable = match &compiler.executable {
        Some(executable) if std::env::var_os(CHILD_MARKER).is_none() => executable,
        _ => return compile_here(module, options),
    };
    let loaded = compile_in_child(executable, module, deadline).and_then(|precompiled| {
        // SAFETY: `PolicyCompiler`'s constructors make their callers vouch that the child is the
        // operator binary of this build, whose `precompile-policy` writes what
        // `PolicyEngine::precompile` returned (and wasmtime refuses code from another version
        // or other settings).
        unsafe { PolicyEngine::from_precompiled(&precompiled, options) }
            .map_err(|error| error.to_string())
    });
    match loaded {
        Ok(engine) => {
            tracing::info!("policy module compiled by a child process and loaded");
            Ok(engine)
        }
        Err(error) => {
            tracing::warn!(
                %error,
                "compiling the policy module in a child process failed; compiling it in the \
                 operator"
            );
            compile_here(module, options)
        }
    }
}

fn compile_here(
    module: &[u8],
    options: EngineOptions,
) -> Result<PolicyEngine, lumigo_policy_host::Error> {
    let engine = PolicyEngine::new(module, options);
    // The compiler's working memory is free now; give it back rather than keep it resident.
    crate::memory::release_freed_memory();
    engine
}

/// Runs `executable precompile-policy` with `module` on its stdin and returns its stdout;
/// killed when it outlives `deadline`.
fn compile_in_child(
    executable: &std::path::Path,
    module: &[u8],
    deadline: Duration,
) -> Result<Vec<u8>, String> {
    let mut child = Command::new(executable)
        .arg(SUBCOMMAND)
        .env(CHILD_MARKER, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("starting {}: {error}", executable.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let pid = child.id();
    let (exited, exit_seen) = mpsc::channel();
    std::thread::scope(|scope| {
        // Feeding and draining on threads of their own: whatever the child does with its pipes,
        // none of them can block this one past the deadline.
        let fed = scope.spawn(move || stdin.write_all(module));
        let output = scope.spawn(move || read_at_most(stdout, MAX_OUTPUT));
        let errors = scope.spawn(move || read_at_most(stderr, MAX_ERROR_OUTPUT));
        let status = scope.spawn(move || {
            let status = child.wait();
            let _ = exited.send(());
            status
        });
        let timed_out = exit_seen.recv_timeout(deadline).is_err();
        if timed_out {
            // SAFETY: a plain syscall; the child is not reaped until `wait` above returns, so
            // its pid still names it.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let status = status
            .join()
            .expect("waiting does not panic")
            .map_err(|error| format!("waiting for the compiler process: {error}"))?;
        let output = output.join().expect("reading does not panic");
        let errors = errors
            .join()
            .expect("reading does not panic")
            .unwrap_or_default();
        let fed = fed.join().expect("writing does not panic");
        if timed_out {
            return Err(format!(
                "the compiler process was still running after {deadline:?}"
            ));
        }
        if !status.success() {
            return Err(format!(
                "the compiler process {status}: {}",
                String::from_utf8_lossy(&errors).trim()
            ));
        }
        fed.map_err(|error| format!("handing the module to the compiler process: {error}"))?;
        output.map_err(|error| format!("reading the compiler process's output: {error}"))
    })
}

fn read_at_most(from: impl Read, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    from.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The child's side of `engine`.
pub fn precompile_stdin_to_stdout() -> std::io::Result<()> {
    let mut module = Vec::new();
    std::io::stdin().read_to_end(&mut module)?;
    let precompiled = PolicyEngine::precompile(&module).map_err(std::io::Error::other)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&precompiled)?;
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    use super::*;

    fn module() -> Vec<u8> {
        lumigo_e2e::testing::policy_module()
    }

    fn answers(engine: &PolicyEngine) {
        assert_eq!(engine.call("protocol_version", b"").unwrap(), b"\"v1\"");
    }

    /// A compiler process that fails, or that hangs, leaves the webhook working: the module is
    /// compiled in the operator instead, and a hanging one is not waited for beyond the deadline.
    #[test]
    fn a_failing_or_hanging_compiler_process_is_replaced_by_compiling_here() {
        // SAFETY: `false` exits with an error and writes nothing, so nothing is loaded.
        let failing = unsafe { PolicyCompiler::child("/bin/false".into()) };
        answers(&engine(&module(), &failing, EngineOptions::default()).unwrap());

        let dir = tempfile::tempdir().unwrap();
        let hanging = dir.path().join("hanging-compiler");
        std::fs::write(&hanging, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&hanging, std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: it never writes anything and is killed, so nothing is loaded.
        let hanging = unsafe { PolicyCompiler::child(hanging) };
        let started = Instant::now();
        answers(
            &engine_within(
                &module(),
                &hanging,
                EngineOptions::default(),
                Duration::from_millis(500),
            )
            .unwrap(),
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited {:?} for a hanging compiler",
            started.elapsed()
        );
    }
}
