//! `trellis-kind plan TOPOLOGY DIR [TAG]`: writes what `e2e/kind/up.sh`
//! needs for each cluster of a kind topology (`trellis_e2e::kind`):
//! `DIR/clusters` (their names, in order), and per cluster
//! `DIR/NAME/kind.yaml`, `DIR/NAME/values.yaml`, `DIR/NAME/network`,
//! `DIR/NAME/pod-subnet` and `DIR/NAME/same-network` (the clusters its
//! pods are routed to, one per line). TAG: the images' tag (default the
//! workspace version).
use std::path::PathBuf;

use anyhow::{bail, Context};
use trellis_e2e::kind;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (topology, dir, tag) = match args.as_slice() {
        [cmd, t, d] if cmd == "plan" => (t, d, env!("CARGO_PKG_VERSION").to_string()),
        [cmd, t, d, tag] if cmd == "plan" => (t, d, tag.clone()),
        _ => bail!("usage: trellis-kind plan TOPOLOGY DIR [TAG]"),
    };
    let text = std::fs::read_to_string(topology).with_context(|| format!("reading {topology}"))?;
    let plans = kind::plan(&kind::parse(&text)?, &tag).with_context(|| topology.clone())?;
    let dir = PathBuf::from(dir);
    let mut names = String::new();
    for p in &plans {
        let d = dir.join(&p.name);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::write(
            d.join("kind.yaml"),
            trellis_api::yaml::to_string(&p.kind_config)?,
        )?;
        std::fs::write(
            d.join("values.yaml"),
            trellis_api::yaml::to_string(&p.values)?,
        )?;
        std::fs::write(d.join("network"), format!("{}\n", p.network))?;
        std::fs::write(d.join("pod-subnet"), format!("{}\n", p.pod_subnet))?;
        let same: String = p.same_network.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(d.join("same-network"), same)?;
        names.push_str(&format!("{}\n", p.name));
    }
    std::fs::write(dir.join("clusters"), names)?;
    println!("planned {} clusters in {}", plans.len(), dir.display());
    Ok(())
}
