//! Against a real cluster, which the build machines cannot run. With the control plane
//! installed (`docker build -f deploy/kubernetes/Dockerfile -t IMAGE .`, then
//! `wasmesh install --image IMAGE`) and `KUBECONFIG` naming the cluster:
//!
//! ```sh
//! cargo test -p wasmesh-kube --test cluster -- --ignored
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};

const REASON: &str = "needs a Kubernetes cluster with wasmesh installed (`wasmesh install`) and KUBECONFIG naming it";

/// Waits for `condition` on the object `name`, for at most `limit`.
async fn wait_for<K>(
    api: Api<K>,
    name: &str,
    limit: Duration,
    condition: impl kube::runtime::wait::Condition<K>,
) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    match tokio::time::timeout(limit, await_condition(api, name, condition)).await {
        Ok(Ok(Some(object))) => Ok(object),
        Ok(Ok(None)) => bail!("{name} is gone"),
        Ok(Err(e)) => Err(e).context(format!("watching {name}")),
        Err(_) => bail!("{name}: not there after {limit:?}"),
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with wasmesh installed (`wasmesh install`) and KUBECONFIG naming it"]
async fn pods_get_sidecars_and_broken_resources_get_status() -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context(REASON)?;
    let ns = format!("wasmesh-it-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": ns, "labels": {"istio-injection": "enabled"}},
            }))?,
        )
        .await?;
    let result = async {
        // A pod in the labelled namespace gets the init container and the sidecar.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sleep", "labels": {"app": "sleep"}},
            "spec": {"containers": [{"name": "sleep", "image": "busybox:1.36", "command": ["sleep", "3600"]}]},
        }))?;
        let created = pods.create(&PostParams::default(), &pod).await?;
        let spec = created.spec.context("a pod has a spec")?;
        let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"wasmesh-proxy"), "containers: {names:?}");
        let inits: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(inits.contains(&"wasmesh-init"), "init containers: {inits:?}");
        wait_for(pods, "sleep", Duration::from_secs(180), conditions::is_pod_running()).await?;

        // A VirtualService the schema accepts but wasmesh refuses gets Istio's status.
        let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
        let vs: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
        let broken: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "broken"},
            "spec": {"hosts": ["sleep"], "http": [{
                "match": [{"uri": {"regex": "(["}}],
                "route": [{"destination": {"host": "sleep"}}],
            }]},
        }))?;
        vs.create(&PostParams::default(), &broken).await?;
        let reported = wait_for(vs, "broken", Duration::from_secs(60), |o: Option<&DynamicObject>| {
            o.and_then(|o| o.data.pointer("/status/validationMessages/0"))
                .is_some()
        })
        .await?;
        let message = &reported.data["status"]["validationMessages"][0];
        assert_eq!(message["level"], "ERROR", "{message}");
        anyhow::Ok(())
    }
    .await;
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    result
}
