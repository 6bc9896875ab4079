//! The policy module is compiled by a child process of this same executable, and the operator
//! loads the machine code it hands back. Compiling runs megabytes of compiler code and heap
//! that would otherwise stay resident in the operator for its whole life; the child takes them
//! away when it exits.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use lumigo_policy_host::{EngineOptions, PolicyEngine};

/// The hidden subcommand the child runs: the module on stdin, its machine code on stdout.
pub const SUBCOMMAND: &str = "precompile-policy";

/// The engine for `module`, compiled by a child process running `compiler` (the operator's
/// executable), or here without one or when that fails (with a warning: the webhook still
/// works, it just keeps the compiler's memory).
pub fn engine(module: &[u8], compiler: Option<&Path>, options: EngineOptions) -> Result<PolicyEngine, lumigo_policy_host::Error> {
    let Some(compiler) = compiler else {
        return compile_here(module, options);
    };
    let loaded = compile_in_child(compiler, module).and_then(|precompiled| {
        // SAFETY: the bytes come from `PolicyEngine::precompile` in a child running the
        // operator's own executable (and wasmtime refuses code from another version or other
        // settings).
        unsafe { PolicyEngine::from_precompiled(&precompiled, options) }.map_err(|error| error.to_string())
    });
    match loaded {
        Ok(engine) => {
            tracing::info!("policy module compiled by a child process and loaded");
            Ok(engine)
        }
        Err(error) => {
            tracing::warn!(%error, "compiling the policy module in a child process failed; compiling it in the operator");
            compile_here(module, options)
        }
    }
}

fn compile_here(module: &[u8], options: EngineOptions) -> Result<PolicyEngine, lumigo_policy_host::Error> {
    let engine = PolicyEngine::new(module, options);
    // The compiler's working memory is free now; give it back rather than keep it resident.
    crate::memory::release_freed_memory();
    engine
}

fn compile_in_child(executable: &Path, module: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new(executable)
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("starting {}: {error}", executable.display()))?;
    // The child reads all of its input before it writes anything, so this cannot deadlock.
    let written = child.stdin.take().expect("stdin is piped").write_all(module);
    let output = child.wait_with_output().map_err(|error| format!("waiting for the compiler process: {error}"))?;
    if !output.status.success() {
        return Err(format!("the compiler process {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()));
    }
    written.map_err(|error| format!("handing the module to the compiler process: {error}"))?;
    Ok(output.stdout)
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
    use super::*;

    fn module() -> Vec<u8> {
        let path = std::env::var("LUMIGO_POLICY_WASM").expect("LUMIGO_POLICY_WASM names the built module: run through `just`");
        std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// A compiler process that fails, or answers with something that is not machine code,
    /// leaves the webhook working: the module is compiled in the operator instead.
    #[test]
    fn a_compiler_process_that_fails_or_answers_garbage_is_replaced_by_compiling_here() {
        for compiler in ["/bin/false", "/bin/echo"] {
            let engine = engine(&module(), Some(Path::new(compiler)), EngineOptions::default()).unwrap();
            assert_eq!(engine.call("protocol_version", b"").unwrap(), b"\"v1\"", "with {compiler}");
        }
    }
}
