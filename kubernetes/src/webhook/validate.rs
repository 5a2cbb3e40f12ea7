//! The validation webhook, pure: an Istio resource the API server is about
//! to store is checked exactly as `trellis apply` checks a document
//! ([`Resource::check`]), and refused with the same field paths.
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use trellis_api::config::Resource;

/// The answer to a review of an Istio resource: allowed (with its warnings,
/// which kubectl prints), or denied with every error as
/// `Kind namespace/name: field.path: reason`, one per line.
pub fn review(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let Some(object) = &req.object else {
        // DELETE and CONNECT carry no object: nothing to check.
        return allowed;
    };
    if req.operation == Operation::Delete {
        return allowed;
    }
    let mut value = serde_json::to_value(object).expect("a DynamicObject serializes to JSON");
    // The API server fills the namespace in before admission; a review
    // without one is checked in the request's.
    if let (Some(ns), Some(meta)) = (&req.namespace, value.get_mut("metadata")) {
        if meta.get("namespace").is_none() {
            meta["namespace"] = ns.clone().into();
        }
    }
    let checked = Resource::check(value);
    let label = format!(
        "{} {}/{}",
        req.kind.kind,
        req.namespace.as_deref().unwrap_or("default"),
        object.metadata.name.as_deref().unwrap_or(&req.name)
    );
    let lines = |problems: &[trellis_api::config::FieldError]| -> Vec<String> {
        problems.iter().map(|e| format!("{label}: {e}")).collect()
    };
    if !checked.errors.is_empty() {
        return allowed.deny(lines(&checked.errors).join("\n"));
    }
    let mut allowed = allowed;
    if !checked.warnings.is_empty() {
        allowed.warnings = Some(lines(&checked.warnings));
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use serde_json::{json, Value};

    fn request(operation: &str, object: Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
                "resource": {"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"},
                "name": "reviews", "namespace": "shop", "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object, "oldObject": null
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn vs(weights: [u32; 2]) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop", "uid": "x",
                         "creationTimestamp": "2026-12-07T20:00:00Z", "generation": 1,
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights[0]},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights[1]}]}]}
        })
    }

    #[test]
    fn a_valid_resource_as_the_api_server_sends_it_is_allowed() {
        let resp = review(&request("CREATE", vs([80, 20])));
        assert!(resp.allowed, "{:?}", resp.result);
        assert_eq!(resp.uid, "u-1");
    }

    #[test]
    fn an_invalid_resource_is_denied_with_the_field_path_trellis_apply_gives() {
        let resp = review(&request("CREATE", vs([50, 40])));
        assert!(!resp.allowed);
        let apply = trellis_api::config::parse_documents(&vs([50, 40]).to_string())
            .unwrap_err()
            .documents
            .remove(0)
            .errors
            .remove(0);
        assert_eq!(
            resp.result.message,
            format!("VirtualService shop/reviews: {apply}")
        );
        assert!(
            resp.result.message.contains("spec.http[0].route"),
            "{}",
            resp.result.message
        );
    }

    #[test]
    fn an_unknown_field_is_denied_by_its_path() {
        let mut bad = vs([80, 20]);
        bad["spec"]["http"][0]["retires"] = json!({"attempts": 3});
        let resp = review(&request("UPDATE", bad));
        assert!(!resp.allowed);
        assert!(
            resp.result.message.contains("spec.http[0].retires"),
            "{}",
            resp.result.message
        );
    }

    #[test]
    fn a_delete_is_allowed() {
        let mut req = request("DELETE", vs([50, 40]));
        req.object = None;
        assert!(review(&req).allowed);
    }
}
