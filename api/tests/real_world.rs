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
            "VirtualService shop/shop spec.http[1].corsPolicy",
        ],
    ),
    ("kubectl-output.yaml", &[]),
    (
        "resilience.yaml",
        &[
            "DestinationRule web/httpbin spec.trafficPolicy.connectionPool.http.http2KeepAlive",
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
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/fixtures/real-world");
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

/// A cheap stand-in for a fuzz target (the fuzz crate is not the config
/// API's): mangled real-world documents never panic the reader or the
/// checks, and every refusal names a document.
#[test]
fn mangled_documents_never_panic() {
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/fixtures/real-world");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const PIECES: &[&str] = &[
        ":",
        "::",
        "[",
        "]",
        "{",
        "}",
        ",",
        "- ",
        "#",
        "&a ",
        "*a",
        "!!str ",
        "|",
        ">",
        "'",
        "\"",
        "%",
        "@",
        "\n",
        "\n---\n",
        "  ",
        "\t",
        "yes",
        "0777",
        "001:db8::",
        "<<: *a",
        "é",
    ];
    for (file, _) in EXPECTED {
        let text: Vec<char> = std::fs::read_to_string(dir.join(file))
            .unwrap()
            .chars()
            .collect();
        for _ in 0..300 {
            let mut mangled = text.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % (mangled.len() + 1);
                match next() % 3 {
                    0 => mangled.truncate(at),
                    1 => {
                        let piece = PIECES[(next() as usize) % PIECES.len()];
                        for (k, c) in piece.chars().enumerate() {
                            mangled.insert(at + k, c);
                        }
                    }
                    _ => {
                        if at < mangled.len() {
                            mangled.remove(at);
                        }
                    }
                }
            }
            let input: String = mangled.into_iter().collect();
            let checks = check_documents(&input);
            for d in &checks.errors {
                assert!(d.index >= 1 && !d.errors.is_empty(), "{input}");
            }
        }
    }
}
