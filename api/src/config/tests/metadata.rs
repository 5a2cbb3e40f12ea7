//! `kubectl get -o yaml` output: server-populated metadata and `status` are
//! accepted and dropped; anything else unknown is still refused.

use super::*;

/// A DestinationRule as `kubectl get -o yaml` prints it.
const FROM_KUBECTL: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"networking.istio.io/v1","kind":"DestinationRule"}
  creationTimestamp: "2025-03-04T10:00:00Z"
  deletionGracePeriodSeconds: 30
  deletionTimestamp: "2025-03-05T10:00:00Z"
  finalizers:
  - example.com/cleanup
  generateName: reviews-
  generation: 3
  labels:
    app: reviews
  managedFields:
  - apiVersion: networking.istio.io/v1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        .: {}
        f:host: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2025-03-04T10:00:00Z"
  name: reviews
  namespace: bookinfo
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: owner
    uid: 0d7c3c1e-8f5e-4c55-9d7a-2b6f0c1e3a11
  resourceVersion: "123456"
  selfLink: /apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews
  uid: 5b2f8f9e-1c3d-4e5f-8a9b-0c1d2e3f4a5b
spec:
  host: reviews
status:
  observedGeneration: 3
  conditions:
  - type: Reconciled
    status: "True"
"#;

#[test]
fn server_populated_metadata_and_status_are_dropped() {
    let resource = one(FROM_KUBECTL);
    assert_eq!(resource.metadata.name, "reviews");
    assert_eq!(resource.metadata.namespace, "bookinfo");
    assert_eq!(resource.metadata.labels["app"], "reviews");
    assert!(resource
        .metadata
        .annotations
        .contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let dumped = assert_round_trips(&resource);
    for dropped in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "finalizers",
        "ownerReferences",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generateName",
        "status",
    ] {
        assert!(
            !dumped.contains(&format!("{dropped}:")),
            "{dropped} is dropped: {dumped}"
        );
    }
}

#[test]
fn status_of_any_shape_is_accepted() {
    for status in ["{}", "ok", "[1, 2]", "null", "{a: {b: [c]}}"] {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: a}}\nspec: {{}}\nstatus: {status}\n"
        );
        one(&yaml);
    }
}

#[test]
fn other_unknown_fields_are_still_refused() {
    let base = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n";
    assert_refused(
        &format!("{base}metadata: {{name: a, uid: x, clusterName: c}}\nspec: {{}}\n"),
        "metadata.clusterName",
        "unknown field `clusterName`",
    );
    assert_refused(
        &format!("{base}metadata: {{name: a}}\nspec: {{}}\nstatus: {{}}\nstatuses: {{}}\n"),
        "statuses",
        "unknown field `statuses`",
    );
    // The spec stays strict too; `status` is only accepted at the top.
    assert_refused(
        &format!("{base}metadata: {{name: a}}\nspec: {{status: {{}}}}\n"),
        "spec.status",
        "unknown field `status`",
    );
}
