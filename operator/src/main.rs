use std::process::ExitCode;

use clap::Parser;
use lumigo_operator::admission::compile::{self, PolicyCompiler};
use lumigo_operator::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PrecompilePolicy = cli.command {
        // A short-lived child of `run`: no runtime, no logging; the parent reads its stderr
        // and quotes it in its own log, so errors are plain text.
        return match compile::precompile_stdin_to_stdout() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        };
    }
    lumigo_operator::memory::return_freed_memory_promptly();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("lumigo-operator: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Crdgen => {
            print!("{}", lumigo_operator::crd::crd_yaml());
            Ok(())
        }
        Command::PrecompilePolicy => unreachable!("handled before the runtime starts"),
        // SAFETY: this is the operator binary; its `precompile-policy` is handled above.
        Command::Run(args) => {
            lumigo_operator::run::run(*args, unsafe { PolicyCompiler::own_executable() }).await
        }
        Command::Uninstall(args) => lumigo_operator::run::uninstall(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "lumigo-operator failed");
            ExitCode::FAILURE
        }
    }
}

/// Logs only its warnings unless `RUST_LOG` names it.
const QUIET_TARGET: &str = "wasmtime_wasi";

fn init_logging(format: LogFormat) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    // wasmtime-wasi opens an INFO span for each WASI call of the policy module (its `random_get`
    // at every start): at `info`, 2% of a review's CPU went to recording spans nobody reads.
    let chosen_by_user =
        std::env::var(EnvFilter::DEFAULT_ENV).is_ok_and(|env| env.contains(QUIET_TARGET));
    if !chosen_by_user {
        filter = filter.add_directive(
            format!("{QUIET_TARGET}=warn")
                .parse()
                .expect("a valid directive"),
        );
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
