use std::process::ExitCode;

use clap::Parser;
use lumigo_operator::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    lumigo_operator::memory::limit_allocator_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("lumigo-operator: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PrecompilePolicy = cli.command {
        // The parent reads this process's stderr and quotes it in its own log: plain text.
        return match lumigo_operator::admission::compile::precompile_stdin_to_stdout() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Crdgen => {
            print!("{}", lumigo_operator::crd::crd_yaml());
            Ok(())
        }
        Command::PrecompilePolicy => unreachable!("handled before logging starts"),
        Command::Run(args) => lumigo_operator::run::run(*args).await,
        Command::Uninstall(args) => lumigo_operator::run::uninstall(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "lumigo-operator failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
