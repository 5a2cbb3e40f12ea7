//! `trellis validate -f FILE|DIR|-`: every document checked offline, as
//! `istioctl validate` does, with the same checks `trellis apply` gets from
//! the control plane. `apply` runs it first too, so that a bad file is
//! refused, and warnings shown, before anything is sent.

use std::collections::BTreeSet;

use trellis_api::config::{check_documents, Resource};
use trellis_api::v1::ConfigSource;

/// What checking the sources of an apply found: one line per problem,
/// `FILE: document N (Kind ns/name): field.path: reason`.
#[derive(Debug, Default)]
pub struct SourceChecks {
    /// The documents that passed.
    pub resources: Vec<Resource>,
    /// Every error; the input is refused when there is one.
    pub errors: Vec<String>,
    /// Every warning: accepted, but worth saying.
    pub warnings: Vec<String>,
}

/// Checks every document of every source, and that no resource is given
/// twice. Pure: no control plane needed.
pub fn check_sources(sources: &[ConfigSource]) -> SourceChecks {
    let mut out = SourceChecks::default();
    let mut seen = BTreeSet::new();
    for s in sources {
        let checks = check_documents(&s.yaml);
        let prefixed = |text: String| {
            text.lines()
                .map(|l| format!("{}: {l}", s.name))
                .collect::<Vec<_>>()
        };
        for d in &checks.errors {
            out.errors.extend(prefixed(d.to_string()));
        }
        for d in &checks.warnings {
            out.warnings.extend(prefixed(d.to_string()));
        }
        for r in checks.resources {
            let key = (
                r.kind(),
                r.metadata.namespace.clone(),
                r.metadata.name.clone(),
            );
            if !seen.insert(key) {
                out.errors.push(format!(
                    "{}: {} {}/{} is given more than once",
                    s.name,
                    r.kind(),
                    r.metadata.namespace,
                    r.metadata.name
                ));
            }
            out.resources.push(r);
        }
    }
    out
}

/// Prints the warnings on standard error, as kubectl prints an admission
/// webhook's.
pub fn print_warnings(checks: &SourceChecks) {
    for w in &checks.warnings {
        eprintln!("Warning: {w}");
    }
}

/// `trellis validate -f`: prints every error and warning of the sources
/// (read by `config::read_sources`); fails when there is an error.
pub fn validate(sources: &[ConfigSource]) -> anyhow::Result<()> {
    let checks = check_sources(sources);
    print_warnings(&checks);
    for e in &checks.errors {
        println!("{e}");
    }
    if checks.errors.is_empty() {
        println!(
            "{} resource{} valid",
            checks.resources.len(),
            if checks.resources.len() == 1 { "" } else { "s" }
        );
        Ok(())
    } else {
        anyhow::bail!(
            "{} error{} found; nothing would be applied",
            checks.errors.len(),
            if checks.errors.len() == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, yaml: &str) -> ConfigSource {
        ConfigSource {
            name: name.into(),
            yaml: yaml.into(),
        }
    }

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec: {hosts: ['*x.example.com'], resolution: NONE}\n";

    #[test]
    fn errors_and_warnings_name_the_file_document_and_field() {
        let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: prod}\nspec:\n  hosts: [r]\n  htp: []\n";
        let checks = check_sources(&[
            source("a.yaml", SE),
            source("b.yaml", &format!("---\n{bad}")),
        ]);
        assert_eq!(
            checks.errors,
            [
                "b.yaml: document 1 (VirtualService prod/r): spec.htp: unknown field `htp`, expected one of `exportTo`, `gateways`, `hosts`, `http`, `tcp`, `tls`",
                "b.yaml: document 1 (VirtualService prod/r): spec: at least one of `http`, `tls`, `tcp` routes is required",
            ]
        );
        assert_eq!(checks.warnings.len(), 1, "{:?}", checks.warnings);
        assert!(
            checks.warnings[0].starts_with("a.yaml: document 1 (ServiceEntry default/db): warning: spec.hosts[0]: partial wildcard"),
            "{:?}",
            checks.warnings
        );
    }

    #[test]
    fn a_resource_given_twice_is_an_error() {
        let checks = check_sources(&[source("a.yaml", SE), source("b.yaml", SE)]);
        assert_eq!(
            checks.errors,
            ["b.yaml: ServiceEntry default/db is given more than once"]
        );
    }
}
