//! `ambit-cni`: exec'd by the container runtime for each CNI command, with the `CNI_*` variables
//! in its environment and the network config on stdin. Dispatches on `CNI_COMMAND`; the commands
//! live in [`ambit_cni::plugin`].

use std::{
    io::{self, Write},
    process::ExitCode,
};

use ambit_cni::{
    agent::UnixAgent,
    environment::{Command, Environment},
    plugin::{self, Invocation},
};

fn main() -> ExitCode {
    let env = Environment::from_process();
    let reply = match plugin::read_stdin(io::stdin().lock()) {
        Err(error) => plugin::fail(error),
        Ok(stdin) => {
            let invocation = Invocation {
                env: &env,
                stdin: &stdin,
                agent: &UnixAgent,
            };
            match env.command() {
                Ok(Command::Add) => plugin::add(&invocation),
                Ok(Command::Del) => plugin::del(&invocation),
                Ok(Command::Check) => plugin::check(&invocation),
                Ok(Command::Version) => plugin::version(&invocation),
                Ok(Command::Status) => plugin::status(&invocation),
                Ok(Command::Gc) => plugin::gc(&invocation),
                Err(error) => plugin::fail(error),
            }
        }
    };
    let mut stdout = io::stdout().lock();
    if stdout.write_all(&reply.stdout).and_then(|()| stdout.flush()).is_err() {
        // The runtime stopped reading; it cannot learn the outcome, so at least not success.
        return ExitCode::FAILURE;
    }
    ExitCode::from(reply.exit_code)
}
