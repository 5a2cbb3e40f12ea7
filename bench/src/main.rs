//! `trellis-bench`: parses the flags and runs the suite on a tokio runtime;
//! the suites are the library's.
use clap::Parser;
use trellis_bench::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    // A relay runs on one thread, as the proxies it stands in for do.
    let runtime = match cli.command {
        Command::Relay(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(trellis_bench::run(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
