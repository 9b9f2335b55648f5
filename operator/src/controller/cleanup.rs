//! The finalizer of an isolated build namespace: owner references cannot cross namespaces,
//! so an ImageBuild's Jobs and Secret copies there are deleted by the operator when the
//! ImageBuild goes. Cleanup is idempotent and never waits for what is already gone: a
//! missing build namespace, Jobs deleted by their TTL, a restart halfway through.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use super::Context;
use super::error::{ReconcileError, Result};
use crate::api::ImageBuild;
use crate::plan::isolated::{FINALIZER, selector};

/// Whether `build` is being deleted.
pub fn is_deleted(build: &ImageBuild) -> bool {
    build.meta().deletion_timestamp.is_some()
}

fn has_finalizer(build: &ImageBuild) -> bool {
    build.finalizers().iter().any(|f| f == FINALIZER)
}

/// The JSON patch that adds the finalizer, tested against the list as read (a concurrent
/// change makes it fail, and the reconcile is retried).
pub fn add_patch(finalizers: Option<&[String]>) -> Value {
    match finalizers {
        None => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    }
}

/// The JSON patch that removes the finalizer, `None` when `finalizers` lacks it.
pub fn remove_patch(finalizers: &[String]) -> Option<Value> {
    let at = finalizers.iter().position(|f| f == FINALIZER)?;
    let path = format!("/metadata/finalizers/{at}");
    Some(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
}

/// Applies `patch` to `build`: the ImageBuild as patched, `None` when it is gone.
async fn patch(ctx: &Context, build: &ImageBuild, patch: Value) -> Result<Option<ImageBuild>> {
    let api: Api<ImageBuild> =
        Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("a valid JSON patch");
    match api
        .patch(
            &build.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(patched) => Ok(Some(patched)),
        // Gone already: nothing is held.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(source) => Err(ReconcileError::Finalizer { source }),
    }
}

/// Adds the finalizer to `build` unless it has it; returns the ImageBuild as it now is
/// (the status written next is written over that version, see `WrittenStatuses`).
pub async fn hold(ctx: &Context, build: Arc<ImageBuild>) -> Result<Arc<ImageBuild>> {
    if has_finalizer(&build) {
        return Ok(build);
    }
    let finalizers = build.meta().finalizers.as_deref();
    let patched = patch(ctx, &build, add_patch(finalizers)).await?;
    Ok(patched.map_or(build, |mut held| {
        held.metadata.managed_fields = None;
        Arc::new(held)
    }))
}

/// Deletes what `build` has in the build namespace, then lets it go. An ImageBuild being
/// deleted without the finalizer waits for nothing from this operator.
pub async fn clean_up(ctx: &Context, build: &ImageBuild) -> Result<Action> {
    let Some(remove) = remove_patch(build.finalizers()) else {
        return Ok(Action::await_change());
    };
    if let Some(namespace) = &ctx.config.build_namespace {
        delete_all::<Job>(ctx, namespace, build).await?;
        delete_all::<Secret>(ctx, namespace, build).await?;
    }
    patch(ctx, build, remove).await?;
    Ok(Action::await_change())
}

/// Deletes every `K` of `build` in `namespace` by label (Jobs with their pods, in the
/// background); a namespace that does not exist holds nothing.
async fn delete_all<K>(ctx: &Context, namespace: &str, build: &ImageBuild) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let list = ListParams::default().labels(&selector(build));
    match api.delete_collection(&params, &list).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::CleanUp {
            kind: K::kind(&()).to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_is_added_against_the_list_as_read_and_removed_only_where_it_is() {
        assert_eq!(add_patch(None)[1]["value"], json!([FINALIZER]));
        let others = vec!["other.example.com/x".to_string()];
        let add = add_patch(Some(&others));
        assert_eq!(add[0]["value"], json!(others));
        assert_eq!(add[1]["path"], "/metadata/finalizers/-");
        assert_eq!(remove_patch(&others), None);
        let both = vec![others[0].clone(), FINALIZER.to_string()];
        let remove = remove_patch(&both).unwrap();
        assert_eq!(
            remove[1],
            json!({"op": "remove", "path": "/metadata/finalizers/1"})
        );
        assert_eq!(remove[0]["value"], FINALIZER);
    }
}
