//! `ambitctl`: Ambit's command-line tool. For now it has one command, `demo`, a two-node mesh in
//! network namespaces on this machine; install/check/waypoint commands come with the operator.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ambitctl", version, about = "Ambit service mesh command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Two-node ztunnel demo in network namespaces (Linux, root): mTLS, policy, metrics.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
    }
}
