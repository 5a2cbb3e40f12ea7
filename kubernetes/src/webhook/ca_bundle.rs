//! The webhook configurations' `caBundle`: the API server calls the
//! webhooks over TLS and trusts the mesh root for them. The chart creates
//! the configurations without one; the control plane writes the root in
//! at start, and again whenever the root or the configurations change
//! ([`keep_patched`], a check every [`RECHECK`]).
use std::time::Duration;

use base64::Engine;
use json_patch::Patch;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, ApiResource, DynamicObject, Patch as KubePatch, PatchParams};
use serde_json::{json, Value};

/// The MutatingWebhookConfiguration of sidecar injection (path `/inject`).
pub const INJECTOR: &str = "trellis-sidecar-injector";
/// The ValidatingWebhookConfiguration of Istio resources (path `/validate`).
pub const VALIDATOR: &str = "trellis-validator";
/// How often the configurations are compared with the root.
pub const RECHECK: Duration = Duration::from_secs(10);

/// The patch that sets every webhook's `caBundle` of `config` (a webhook
/// configuration as JSON) to `bundle` (PEM); `None` if all have it. Each
/// write is guarded by a test of the webhook's name, so that a
/// configuration changed in between is refused, not patched wrongly.
pub fn patch(config: &Value, bundle: &str) -> Option<Patch> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut ops = Vec::new();
    let webhooks = config["webhooks"].as_array().into_iter().flatten();
    for (i, hook) in webhooks.enumerate() {
        if hook["clientConfig"]["caBundle"].as_str() == Some(encoded.as_str()) {
            continue;
        }
        ops.push(
            json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook["name"]}),
        );
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    (!ops.is_empty())
        .then(|| serde_json::from_value(Value::Array(ops)).expect("test and add operations"))
}

/// Keeps both configurations' `caBundle` equal to `root()` (the mesh
/// root, PEM; `None` until the node has the mesh record) for as long as
/// the task runs. A configuration that does not exist is not created:
/// it is logged once, and looked for again every [`RECHECK`].
pub async fn keep_patched(client: kube::Client, root: impl Fn() -> Option<String>) {
    let kinds = [
        (
            ApiResource::erase::<MutatingWebhookConfiguration>(&()),
            INJECTOR,
        ),
        (
            ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
            VALIDATOR,
        ),
    ];
    let mut missing = [false; 2];
    loop {
        if let Some(root) = root() {
            for (i, (kind, name)) in kinds.iter().enumerate() {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), kind);
                match patch_one(&api, name, &root).await {
                    Ok(found) => {
                        if !found && !missing[i] {
                            tracing::info!(
                                "{} {name} does not exist (yet): nothing to patch; looking again every {RECHECK:?}",
                                kind.kind
                            );
                        }
                        missing[i] = !found;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "patching the caBundle of {} {name}", kind.kind)
                    }
                }
            }
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// Patches `name` if it exists and needs it; whether it exists.
async fn patch_one(api: &Api<DynamicObject>, name: &str, root: &str) -> kube::Result<bool> {
    let Some(config) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let value = serde_json::to_value(&config).expect("a DynamicObject serializes to JSON");
    if let Some(p) = patch(&value, root) {
        api.patch(name, &PatchParams::default(), &KubePatch::Json::<()>(p))
            .await?;
        tracing::info!("wrote the mesh root into the caBundle of {name}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn config(bundles: [Option<&str>; 2]) -> Value {
        let hook = |name: &str, bundle: Option<&str>| {
            let mut h =
                json!({"name": name, "clientConfig": {"url": "https://127.0.0.1:15017/inject"}});
            if let Some(b) = bundle {
                h["clientConfig"]["caBundle"] = b.into();
            }
            h
        };
        json!({"webhooks": [hook("a.trellis.io", bundles[0]), hook("b.trellis.io", bundles[1])]})
    }

    #[test]
    fn every_webhook_without_the_root_gets_it_and_then_nothing_is_left_to_patch() {
        let mut c = config([None, Some("b2xk")]);
        let p = patch(&c, ROOT).expect("a patch");
        json_patch::patch(&mut c, &p).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(ROOT);
        for i in 0..2 {
            assert_eq!(
                c["webhooks"][i]["clientConfig"]["caBundle"],
                encoded.as_str()
            );
        }
        assert_eq!(patch(&c, ROOT), None);
    }

    #[test]
    fn a_patch_of_a_configuration_changed_in_between_fails() {
        let c = config([None, None]);
        let p = patch(&c, ROOT).unwrap();
        let mut changed = c.clone();
        changed["webhooks"][0]["name"] = "other.trellis.io".into();
        assert!(json_patch::patch(&mut changed, &p).is_err());
    }

    #[test]
    fn a_configuration_without_webhooks_needs_no_patch() {
        assert_eq!(patch(&json!({"metadata": {"name": "x"}}), ROOT), None);
    }
}
