//! Every document of `tests/fixtures/real-world/` is accepted, as Istio
//! accepts it, with the warnings each file is known to give.

use std::path::Path;

use trellis_api::config::check_documents;

/// Per file: the warnings' `KIND NAME PATH`, in order.
const EXPECTED: &[(&str, &[&str])] = &[
    ("bookinfo-routing.yaml", &[]),
    (
        "egress.yaml",
        &["VirtualService default/external-api-timeouts spec.tls"],
    ),
    (
        "gateway.yaml",
        &[
            "Gateway istio-ingress/public spec",
            "VirtualService shop/shop spec.gateways",
            "VirtualService shop/shop spec.http[1].corsPolicy",
        ],
    ),
    ("kubectl-output.yaml", &[]),
    (
        "resilience.yaml",
        &[
            "DestinationRule web/httpbin spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            "DestinationRule web/httpbin spec.trafficPolicy.loadBalancer.localityLbSetting",
            "DestinationRule web/httpbin spec.trafficPolicy.tls",
        ],
    ),
    (
        "security.yaml",
        &[
            "AuthorizationPolicy shop/frontend spec",
            // Istio's warning: an HTTP-only DENY rule denies TCP traffic.
            "AuthorizationPolicy shop/deny-admin spec.rules[0]",
            "AuthorizationPolicy shop/deny-admin spec",
            "RequestAuthentication shop/jwt spec",
        ],
    ),
    (
        "workloads.yaml",
        &["Sidecar billing/default spec.outboundTrafficPolicy"],
    ),
];

#[test]
fn real_world_istio_yaml_is_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-world");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let listed: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    assert_eq!(files, listed, "every fixture has its row");
    for (file, expected) in EXPECTED {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let checks = check_documents(&text);
        let errors: Vec<String> = checks.errors.iter().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{file}:\n{}", errors.join("\n"));
        assert!(!checks.resources.is_empty(), "{file}");
        let warnings: Vec<String> = checks
            .warnings
            .iter()
            .flat_map(|d| {
                d.warnings.iter().map(move |w| {
                    format!(
                        "{} {} {}",
                        d.kind.as_deref().unwrap_or(""),
                        d.name.as_deref().unwrap_or(""),
                        w.path
                    )
                })
            })
            .collect();
        assert_eq!(warnings, *expected, "{file}");
    }
}
