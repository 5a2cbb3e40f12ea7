use serde_json::json;

use super::*;

fn vs(name: &str, weights: [u32; 2]) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": name, "namespace": "prod", "uid": "1", "resourceVersion": "7",
            "generation": 1, "creationTimestamp": "2026-12-07T10:00:00Z",
            "annotations": {LAST_APPLIED: "{...}", "team": "a"},
        },
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights[0]},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights[1]},
        ]}]},
        "status": {},
    })
}

fn objects(list: Vec<Value>) -> Objects {
    list.into_iter()
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap().to_string();
            (("VirtualService", "prod".to_string(), name), o)
        })
        .collect()
}

#[test]
fn a_custom_resource_is_the_resource_trellis_apply_makes_of_it_with_its_source() {
    let mut object = vs("reviews", [80, 20]);
    // Items of a list come without their kind.
    object.as_object_mut().unwrap().remove("kind");
    let records = records(&objects(vec![object]), "east");
    let json = &records["config/VirtualService/prod/reviews"];
    let r = Resource::from_value(serde_json::from_slice(json).unwrap()).unwrap();
    let mut applied = trellis_api::config::parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {name: reviews, namespace: prod, annotations: {team: a}}\n\
         spec:\n  hosts: [reviews]\n  http:\n  - route:\n\
         \x20   - {destination: {host: reviews, subset: v1}, weight: 80}\n\
         \x20   - {destination: {host: reviews, subset: v2}, weight: 20}\n",
    )
    .unwrap()
    .remove(0);
    assert_eq!(r.spec, applied.spec);
    applied.metadata.annotations.extend([
        (
            annotations::SOURCE.to_string(),
            "kubernetes/east".to_string(),
        ),
        (
            annotations::CREATED.to_string(),
            "2026-12-07T10:00:00Z".to_string(),
        ),
    ]);
    assert_eq!(
        r.metadata, applied.metadata,
        "kubectl's last-applied copy is dropped"
    );
}

#[test]
fn an_invalid_custom_resource_is_kept_apart_with_its_field_paths() {
    let mut typo = vs("typo", [50, 50]);
    typo["spec"]["http"][0]["rout"] = json!([]);
    let records = records(
        &objects(vec![vs("bad", [50, 40]), typo, vs("good", [50, 50])]),
        "east",
    );
    assert_eq!(
        records.keys().collect::<Vec<_>>(),
        [
            "config/VirtualService/prod/good",
            "invalid/VirtualService/prod/bad",
            "invalid/VirtualService/prod/typo",
        ]
    );
    let errors = |key: &str| {
        serde_json::from_slice::<Invalid>(&records[key])
            .unwrap()
            .errors
    };
    let bad = errors("invalid/VirtualService/prod/bad");
    assert!(
        bad.iter().any(|e| e.starts_with("spec.http[0].route")),
        "{bad:?}"
    );
    let typo = errors("invalid/VirtualService/prod/typo");
    assert!(
        typo.iter().any(|e| e.starts_with("spec.http[0].rout:")),
        "{typo:?}"
    );
}
