//! The files `trellis vm join` writes, as pure functions of what was
//! there before: the agent's settings (`/etc/trellis/agent.env`), the
//! resolver's (`/etc/resolv.conf`, or a systemd-resolved drop-in), and the
//! agent unit's drop-in for `--dns`.
use std::net::SocketAddr;

/// `text` (an environment file) with each `KEY=VALUE` of `vars` set: the
/// first line setting KEY, or its commented-out default `#KEY=...`, is
/// replaced in place, so the packaged comments stay beside it; a KEY with
/// no such line is appended. Any later line setting KEY is commented out,
/// so that the value given is the one in force.
pub fn set_vars(text: &str, vars: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (key, value) in vars {
        let set = format!("{key}={value}");
        let mut placed = false;
        for line in lines.iter_mut() {
            let bare = line.trim_start().trim_start_matches('#').trim_start();
            if !bare.starts_with(&format!("{key}=")) {
                continue;
            }
            let active = !line.trim_start().starts_with('#');
            if !placed {
                *line = set.clone();
                placed = true;
            } else if active {
                *line = format!("#{line}");
            }
        }
        if !placed {
            lines.push(set);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The value `text` (an environment file) sets KEY to, if a line sets it
/// (the last one wins, as systemd reads it).
pub fn get_var(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix('='))
        .last()
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// `text` with every line setting KEY commented out.
pub fn unset_var(text: &str, key: &str) -> String {
    let mut out: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(&format!("{key}=")) {
                format!("#{}", l.trim_start())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

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
/// proxy at `agent` (resolved names a port since systemd 246).
pub fn resolved_dropin(agent: SocketAddr) -> String {
    format!(
        "{WRITTEN_BY}\n# Every name goes to the Trellis agent, which answers mesh names and\n\
         # forwards the rest to resolved's upstreams (TRELLIS_DNS_UPSTREAM).\n\
         [Resolve]\nDNS={agent}\nDomains=~.\n"
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

    const PACKAGED: &str = "# Settings.\n\n# The token.\n#TRELLIS_TOKEN=\n\n#TRELLIS_CAPTURE=none\n#TRELLIS_LOG=info\n";

    #[test]
    fn set_vars_replaces_the_commented_default_in_place_and_keeps_comments() {
        let out = set_vars(
            PACKAGED,
            &[
                ("TRELLIS_TOKEN", "tok".into()),
                ("TRELLIS_CAPTURE", "iptables".into()),
                ("TRELLIS_DNS_UPSTREAM", "10.0.0.2:53".into()),
            ],
        );
        assert_eq!(
            out,
            "# Settings.\n\n# The token.\nTRELLIS_TOKEN=tok\n\nTRELLIS_CAPTURE=iptables\n\
             #TRELLIS_LOG=info\nTRELLIS_DNS_UPSTREAM=10.0.0.2:53\n"
        );
        assert_eq!(get_var(&out, "TRELLIS_TOKEN").as_deref(), Some("tok"));
        assert_eq!(get_var(&out, "TRELLIS_LOG"), None);
    }

    #[test]
    fn set_vars_comments_out_a_later_setting_so_the_given_value_wins() {
        let text = "TRELLIS_CAPTURE=none\nX=1\nTRELLIS_CAPTURE=nftables\n";
        let out = set_vars(text, &[("TRELLIS_CAPTURE", "iptables".into())]);
        assert_eq!(
            out,
            "TRELLIS_CAPTURE=iptables\nX=1\n#TRELLIS_CAPTURE=nftables\n"
        );
        assert_eq!(
            get_var(&out, "TRELLIS_CAPTURE").as_deref(),
            Some("iptables")
        );
        // A prefix of another key is not that key.
        let out = set_vars("#TRELLIS_DNS_UPSTREAM=\n", &[("TRELLIS_DNS", "a".into())]);
        assert_eq!(out, "#TRELLIS_DNS_UPSTREAM=\nTRELLIS_DNS=a\n");
    }

    #[test]
    fn get_var_reads_the_last_setting_and_unset_var_comments_it_out() {
        let text = "TRELLIS_TOKEN=a\n  TRELLIS_TOKEN=\"b\"\n#TRELLIS_TOKEN=c\n";
        assert_eq!(get_var(text, "TRELLIS_TOKEN").as_deref(), Some("b"));
        let out = unset_var(text, "TRELLIS_TOKEN");
        assert_eq!(get_var(&out, "TRELLIS_TOKEN"), None);
        assert_eq!(
            out,
            "#TRELLIS_TOKEN=a\n#TRELLIS_TOKEN=\"b\"\n#TRELLIS_TOKEN=c\n"
        );
    }

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
            d.contains("[Resolve]\nDNS=127.0.0.1:15053\nDomains=~.\n"),
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
