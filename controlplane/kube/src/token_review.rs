//! Sidecars' tokens, reviewed by the API server (istiod's authenticator): an injected sidecar
//! sends its pod's projected service-account token (audience `istio-ca`) in its Hello, and a
//! `TokenReview` says whose it is, so a pod cannot claim another's identity and be given its
//! certificate.

use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use wasmesh_controlplane::authn::{AuthError, Authenticate, Workload};
use wasmesh_controlplane::sidecar::Node;

use crate::source::Pods;

/// The audience of sidecars' tokens (Istio's), which the injector projects.
pub const AUDIENCE: &str = "istio-ca";
/// How long a review may take: the sidecar's stream waits on it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Reviews tokens with `authentication.k8s.io/v1` TokenReviews (RBAC: `create` on
/// `tokenreviews`).
pub struct TokenReviewer {
    api: Api<TokenReview>,
    pods: Option<Pods>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client) -> TokenReviewer {
        TokenReviewer {
            api: Api::all(client),
            pods: None,
        }
    }

    /// Also checks what a sidecar registers against its Pod (see [`attest`]).
    pub fn with_pods(self, pods: Pods) -> TokenReviewer {
        TokenReviewer {
            pods: Some(pods),
            ..self
        }
    }

    async fn review(&self, token: &str) -> Result<Workload, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviewed =
            tokio::time::timeout(TIMEOUT, self.api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| AuthError::Unavailable(format!("no answer within {TIMEOUT:?}")))?
                .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        workload(reviewed.status.unwrap_or_default())
    }
}

impl Authenticate for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, AuthError>> {
        Box::pin(self.review(token))
    }

    fn attest(&self, node: &mut Node) -> Result<(), AuthError> {
        match &self.pods {
            Some(pods) => attest(node, pods.get(&node.namespace, &node.name).as_deref()),
            None => Ok(()),
        }
    }
}

/// A sidecar is its pod's (`--node` is the pod's name): the pod must run as the service
/// account the token proved, and its labels and IP, not the sidecar's word, are what the
/// workload registers with, as Istio takes endpoints from the API. A pod not known yet (the
/// watch lags its start by a moment) is a retry, not a refusal.
pub fn attest(node: &mut Node, pod: Option<&Pod>) -> Result<(), AuthError> {
    let name = format!("{}/{}", node.namespace, node.name);
    let Some(pod) = pod else {
        return Err(AuthError::Unavailable(format!(
            "pod {name} is not known (yet) as running"
        )));
    };
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    if account != node.service_account {
        return Err(AuthError::Invalid(format!(
            "pod {name} runs as service account {account}"
        )));
    }
    node.labels = pod.labels().clone();
    if !node.pod_ip.is_empty() {
        match pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            Some(ip) => node.pod_ip = ip,
            None => {
                return Err(AuthError::Unavailable(format!("pod {name} has no IP yet")));
            }
        }
    }
    Ok(())
}

/// The service account a review authenticated, for [`AUDIENCE`].
fn workload(status: TokenReviewStatus) -> Result<Workload, AuthError> {
    let invalid = |why: String| Err(AuthError::Invalid(why));
    if status.authenticated != Some(true) {
        return invalid(match status.error.filter(|e| !e.is_empty()) {
            Some(error) => format!("the API server refused it: {error}"),
            None => "the API server did not authenticate it".to_owned(),
        });
    }
    // An API server that ignored the audience asked for would name none (or others).
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return invalid(format!(
            "not for audience {AUDIENCE} (the review's audiences: {audiences:?})"
        ));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let parts = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
    match parts {
        Some((namespace, service_account)) => Ok(Workload {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }),
        None => invalid(format!("{username:?} is not a service account")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    /// A reviewer whose API server answers one TokenReview with `status` (HTTP `code`) and
    /// hands back the request's body.
    async fn review(code: u16, answer: Value) -> (Result<Workload, AuthError>, Value) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = tokio::spawn(async move {
            let (request, respond) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), Method::POST);
            assert_eq!(
                request.uri().path(),
                "/apis/authentication.k8s.io/v1/tokenreviews"
            );
            let body = request.into_body().collect_bytes().await.unwrap();
            let sent: Value = serde_json::from_slice(&body).unwrap();
            let response = Response::builder()
                .status(code)
                .body(Body::from(answer.to_string().into_bytes()))
                .unwrap();
            respond.send_response(response);
            sent
        });
        let reviewer = TokenReviewer::new(kube::Client::new(service, "default"));
        let result = reviewer.authenticate("the-token").await;
        (result, api.await.unwrap())
    }

    /// A TokenReview as the API server returns it, with `status`.
    fn reviewed(status: Value) -> Value {
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": "the-token", "audiences": [AUDIENCE]},
            "status": status,
        })
    }

    fn authenticated(username: &str, audiences: &[&str]) -> Value {
        reviewed(json!({
            "authenticated": true,
            "user": {
                "username": username,
                "uid": "5f0c3b7e-0d8a-4a55-9f5e-2b1d6c9e8a41",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["reviews-v1-7d9f8c-x2x7q"]},
            },
            "audiences": audiences,
        }))
    }

    fn invalid(result: Result<Workload, AuthError>) -> String {
        match result {
            Err(e @ AuthError::Invalid(_)) => e.to_string(),
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_service_accounts_token_for_istio_ca_proves_its_workload() {
        let answer = authenticated("system:serviceaccount:shop:reviews", &[AUDIENCE]);
        let (result, sent) = review(201, answer).await;
        assert_eq!(
            result.unwrap(),
            Workload {
                namespace: "shop".into(),
                service_account: "reviews".into(),
            }
        );
        assert_eq!(sent["kind"], "TokenReview");
        assert_eq!(
            sent["spec"],
            json!({"token": "the-token", "audiences": [AUDIENCE]})
        );
    }

    #[tokio::test]
    async fn a_token_the_api_server_refuses_is_invalid_saying_why() {
        let answer = reviewed(json!({
            "user": {},
            "error": "[invalid bearer token, service account token has expired]",
        }));
        let error = invalid(review(201, answer).await.0);
        assert!(
            error.contains("service account token has expired"),
            "{error}"
        );

        let error = invalid(review(201, reviewed(json!({"user": {}}))).await.0);
        assert!(error.contains("did not authenticate"), "{error}");
    }

    #[tokio::test]
    async fn a_review_for_another_audience_or_none_is_invalid() {
        for audiences in [&["https://kubernetes.default.svc"][..], &[]] {
            let answer = authenticated("system:serviceaccount:shop:reviews", audiences);
            let error = invalid(review(201, answer).await.0);
            assert!(error.contains("not for audience istio-ca"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_user_that_is_no_service_account_is_invalid() {
        for username in [
            "alice@example.com",
            "system:node:worker-1",
            "system:serviceaccount:shop",
            "system:serviceaccount::reviews",
            "system:serviceaccount:shop:reviews:extra",
        ] {
            let error = invalid(review(201, authenticated(username, &[AUDIENCE])).await.0);
            assert!(error.contains("is not a service account"), "{error}");
        }
    }

    #[tokio::test]
    async fn an_api_error_is_unavailable_so_the_sidecar_tries_again() {
        let forbidden = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:wasmesh-system:wasmesh-controlplane\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
            "reason": "Forbidden", "details": {"group": "authentication.k8s.io", "kind": "tokenreviews"}, "code": 403,
        });
        match review(403, forbidden).await.0 {
            Err(e @ AuthError::Unavailable(_)) => {
                assert!(e.to_string().contains("cannot create resource"), "{e}")
            }
            other => panic!("expected the review to be unavailable, got {other:?}"),
        }
    }

    fn node(labels: &[(&str, &str)], pod_ip: &str) -> Node {
        Node {
            name: "reviews-v1-7f9".into(),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pod_ip: pod_ip.into(),
            ..Node::default()
        }
    }

    fn pod(account: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "reviews-v1-7f9", "namespace": "shop",
                         "labels": {"app": "reviews", "version": "v1"}},
            "spec": {"serviceAccountName": account, "containers": []},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn what_a_sidecar_registers_comes_from_its_pod() {
        // Labels and IP of its choosing are replaced by the pod's.
        let mut claimed = node(&[("app", "ratings"), ("version", "v9")], "10.0.0.99");
        attest(&mut claimed, Some(&pod("reviews", Some("10.0.0.7")))).unwrap();
        let labels: Vec<_> = claimed.labels.iter().collect();
        assert_eq!(
            labels,
            [
                (&"app".to_owned(), &"reviews".to_owned()),
                (&"version".to_owned(), &"v1".to_owned())
            ]
        );
        assert_eq!(claimed.pod_ip, "10.0.0.7");

        // A loopback sidecar (no pod IP claimed) stays without one.
        let mut loopback = node(&[], "");
        attest(&mut loopback, Some(&pod("reviews", Some("10.0.0.7")))).unwrap();
        assert_eq!(loopback.pod_ip, "");

        // Another account's pod: refused. No pod (yet), or no IP yet: tried again later.
        let err = attest(&mut node(&[], ""), Some(&pod("ratings", None))).unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains("runs as service account ratings"),
            "{err}"
        );
        let err = attest(&mut node(&[], ""), None).unwrap_err();
        assert!(matches!(err, AuthError::Unavailable(_)), "{err}");
        let err = attest(&mut node(&[], "10.0.0.99"), Some(&pod("reviews", None))).unwrap_err();
        assert!(matches!(err, AuthError::Unavailable(_)), "{err}");
    }
}
