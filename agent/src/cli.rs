//! The node CLI (placeholder: being written).

use std::process::ExitCode;

/// Commands that ask the running agent.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Agent status.
    Status,
}

/// Runs a command.
pub fn run(_command: Command) -> ExitCode {
    ExitCode::FAILURE
}
