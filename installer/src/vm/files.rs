//! The files `trellis vm join --dns` writes, as pure functions of what
//! was there before: the resolver's (`/etc/resolv.conf`, or a
//! systemd-resolved drop-in) and the agent unit's drop-in. The agent's
//! settings are rewritten with [`trellis_transport::unit::set_vars`].
use std::net::SocketAddr;

/// The header of the files join writes whole.
const WRITTEN_BY: &str = "# Written by `trellis vm join --dns`; `trellis vm leave` undoes it.";

/// /etc/resolv.conf pointing at the agent's DNS proxy on `agent` (port
/// 53: resolv.conf cannot name another), keeping the `search`, `domain`
/// and `options` lines of `before`; its `nameserver`s become the agent's
/// upstreams.
pub fn resolv_conf(before: &str, agent: std::net::IpAddr) -> String {
    let mut out = format!(
        "{WRITTEN_BY}\n# The Trellis agent answers mesh names and forwards the rest to the\n\
         # nameservers this file listed before (TRELLIS_DNS_UPSTREAM in\n\
         # /etc/trellis/agent.env).\nnameserver {agent}\n"
    );
    for line in before.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if matches!(first, "search" | "domain" | "options") {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// The systemd-resolved drop-in sending every query to the agent's DNS
/// proxy at `agent` (resolved names a port since systemd 246). `DNS=`
/// accumulates over resolved.conf and its drop-ins: the empty one first
/// drops the servers set before (resolved.conf's), else resolved would
/// keep asking the first of them and the agent only when it fails.
pub fn resolved_dropin(agent: SocketAddr) -> String {
    format!(
        "{WRITTEN_BY}\n# Every name goes to the Trellis agent, which answers mesh names and\n\
         # forwards the rest to resolved's upstreams (TRELLIS_DNS_UPSTREAM); the\n\
         # empty DNS= drops the servers resolved.conf sets, which come first.\n\
         [Resolve]\nDNS=\nDNS={agent}\nDomains=~.\n"
    )
}

/// The agent unit's drop-in letting it bind port 53, where resolv.conf
/// sends queries.
pub fn bind_53_dropin() -> String {
    format!(
        "{WRITTEN_BY}\n# The agent's DNS proxy listens on port 53, where /etc/resolv.conf sends\n\
         # queries.\n[Service]\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n\
         CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"
    )
}

/// The systemd version `systemctl --version` printed (`systemd 252 (...)`).
pub fn systemd_version(out: &str) -> Option<u32> {
    out.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_points_at_the_agent_and_keeps_search_and_options() {
        let before = "# from DHCP\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nsearch corp.example\noptions edns0\n";
        let out = resolv_conf(before, "127.0.0.1".parse().unwrap());
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "nameserver 127.0.0.1",
                "search corp.example",
                "options edns0"
            ]
        );
    }

    #[test]
    fn drop_ins_name_the_agent_and_the_capability() {
        let d = resolved_dropin("127.0.0.1:15053".parse().unwrap());
        assert!(
            d.contains("[Resolve]\nDNS=\nDNS=127.0.0.1:15053\nDomains=~.\n"),
            "{d}"
        );
        let u = bind_53_dropin();
        assert!(
            u.contains("[Service]\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"),
            "{u}"
        );
        assert_eq!(
            systemd_version("systemd 252 (252.30-1~deb12u2)\n+PAM"),
            Some(252)
        );
        assert_eq!(systemd_version("nope"), None);
    }
}
