//! Command-line interface of the `dr-gateway` binary: one subcommand per mode.
//!
//! - `dr-gateway serve [--sandbox]` runs the gateway (flags in [`crate::config::ServeArgs`]);
//! - `dr-gateway sandbox --listen 127.0.0.1:8090 [--seed N] [--settle immediate|stepped]
//!   [--webhook URL=SECRET …]` runs the DR emulator alone until SIGINT/SIGTERM (only in
//!   builds with the default `sandbox` feature; flags in `dr_sandbox::cli`);
//! - `dr-gateway health-check --addr host:port` asks a gateway's gRPC health service.
//!
//! `dr-gateway --version` says whether the build has the sandbox: the production
//! image is built without it.

use clap::{Args, Parser, Subcommand};

use crate::config::ServeArgs;
#[cfg(feature = "sandbox")]
pub use dr_sandbox::cli::SandboxArgs;

/// `--version`: the crate version and whether the DR sandbox is compiled in.
pub const VERSION: &str = if cfg!(feature = "sandbox") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (with the Digital River sandbox)"
    )
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (production build: no sandbox)")
};

/// dr-gateway: a gRPC gateway for Digital River order fulfillment, with a DR sandbox.
#[derive(Debug, Parser)]
#[command(name = "dr-gateway", version = VERSION, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Modes of the binary.
// why: parsed once at start; boxing the serve flags would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (gRPC + webhook listeners); `--sandbox` adds an in-process DR emulator.
    // Boxed: `serve` has many flags (clippy::large_enum_variant).
    Serve(Box<ServeArgs>),
    /// Run the stateful Digital River API emulator alone.
    #[cfg(feature = "sandbox")]
    Sandbox(SandboxArgs),
    /// Ask a gateway's gRPC health service whether it is SERVING (exit 0) or not (exit 1).
    HealthCheck(HealthCheckArgs),
}

/// `dr-gateway health-check` flags.
#[derive(Debug, Args)]
pub struct HealthCheckArgs {
    /// Gateway gRPC address, host:port (a Service name works: dr-gateway:50051).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Service to ask about ("" = the whole server).
    #[arg(long, default_value = "")]
    pub service: String,
}
