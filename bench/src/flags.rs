//! The flags the suites share, each with one name, one default and one
//! doc line, flattened into the suites' `Args`: [`Phases`] into the suites
//! that load the systems for a fixed time (`controlplane`, `proxy`, `dns`),
//! [`AgentLog`] into those that run agents (`proxy`, `dns`), [`Build`] into
//! every suite. One struct per set of suites, so that no suite takes a flag
//! that does nothing in it (`push` has no fixed-length load).
use std::time::Duration;

use anyhow::bail;

use crate::bins;

/// How long each load phase runs.
#[derive(clap::Args)]
pub struct Phases {
    /// Measured seconds of each load phase, after its warm-up.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of load before each measurement (of a phase, or of a round
    /// of one).
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
}

impl Phases {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.seconds == 0 {
            bail!("--seconds: must be at least 1");
        }
        Ok(())
    }

    /// Before each measurement.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_seconds)
    }

    /// Of each phase.
    pub fn measure(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

/// The log level of the agents a suite starts.
#[derive(clap::Args)]
pub struct AgentLog {
    /// `TRELLIS_LOG` of the agents (the end of their logs is printed if a
    /// request through them fails).
    #[arg(long, default_value = "warn")]
    pub agent_log: String,
}

/// Whether the Trellis binaries are built before the run.
#[derive(clap::Args)]
pub struct Build {
    /// Use the Trellis binaries beside this one as they are, instead of
    /// building them first.
    #[arg(long)]
    pub no_build: bool,
}

impl Build {
    /// Makes the suite run `packages` from beside this executable, built
    /// first unless `--no-build`.
    pub fn binaries(&self, packages: &[&str]) -> anyhow::Result<()> {
        bins::prepare(!self.no_build, packages)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Suite {
        #[command(flatten)]
        phases: Phases,
        #[command(flatten)]
        agent: AgentLog,
        #[command(flatten)]
        build: Build,
    }

    #[test]
    fn defaults_and_names() {
        let s = Suite::try_parse_from(["suite"]).unwrap();
        assert_eq!((s.phases.seconds, s.phases.warmup_seconds), (10, 2));
        assert_eq!(s.phases.measure(), Duration::from_secs(10));
        assert_eq!(s.agent.agent_log, "warn");
        assert!(!s.build.no_build);
        let s = Suite::try_parse_from([
            "suite",
            "--seconds",
            "4",
            "--warmup-seconds",
            "0",
            "--agent-log",
            "debug",
            "--no-build",
        ])
        .unwrap();
        assert_eq!(s.phases.warmup(), Duration::ZERO);
        assert_eq!(s.phases.seconds, 4);
        assert_eq!(s.agent.agent_log, "debug");
        assert!(s.build.no_build);
        assert!(s.phases.validate().is_ok());
        let s = Suite::try_parse_from(["suite", "--seconds", "0"]).unwrap();
        let err = s.phases.validate().unwrap_err().to_string();
        assert!(err.contains("--seconds"), "{err}");
    }
}
