//! A client of the cluster's API server.
use std::path::{Path, PathBuf};

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where a process finds its cluster's API server: `in-cluster` (the
/// pod's service account: `KUBERNETES_SERVICE_HOST` and the token and CA
/// mounted under `/var/run/secrets/kubernetes.io/serviceaccount`), or a
/// kubeconfig file (its current context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    InCluster,
    Kubeconfig(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("expected `in-cluster` or the path of a kubeconfig file".into()),
            "in-cluster" => Ok(Source::InCluster),
            path => Ok(Source::Kubeconfig(PathBuf::from(path))),
        }
    }
}

/// A client for the API server `source` names.
pub async fn client(source: &Source) -> anyhow::Result<kube::Client> {
    let config = match source {
        Source::Kubeconfig(path) => from_kubeconfig(path).await?,
        Source::InCluster => kube::Config::incluster().context(
            "--kubernetes in-cluster, but not in a pod (KUBERNETES_SERVICE_HOST or the service account token is missing)",
        )?,
    };
    kube::Client::try_from(config).context("making a Kubernetes API client")
}

async fn from_kubeconfig(path: &Path) -> anyhow::Result<kube::Config> {
    let file = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_in_cluster_or_a_kubeconfig_path() {
        assert_eq!("in-cluster".parse(), Ok(Source::InCluster));
        assert_eq!(
            "/etc/kube/config".parse(),
            Ok(Source::Kubeconfig(PathBuf::from("/etc/kube/config")))
        );
        assert!("".parse::<Source>().is_err());
    }
}
