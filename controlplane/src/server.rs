//! The gRPC services: `MeshConfig` (proxies' streams and module downloads) and `MeshAdmin`
//! (proxy status and config for the CLI).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status, Streaming};
use wasmesh_api as api;

use crate::authn::{AuthError, Authenticate, Authenticator};
use crate::ca::Authority;
use crate::mesh::{JoinError, Mesh};
use crate::sidecar::{InboundPort, Node};

/// Both services over one mesh.
#[derive(Clone)]
pub struct Services {
    mesh: Arc<Mesh>,
    /// The CA signing proxies' certificates, as it changes; without one, proxies get no trust
    /// bundle and their CSRs are refused.
    authority: Option<tokio::sync::watch::Receiver<Arc<Authority>>>,
    /// What a Hello's token must satisfy, where proxies must prove their identity; without
    /// one, a Hello's namespace and service account are taken as they are.
    authenticator: Option<Arc<Authenticator>>,
    /// Where the dashboard is served, if it is (`wasmesh dashboard` asks).
    dashboard: Option<std::net::SocketAddr>,
}

impl Services {
    pub fn new(mesh: Arc<Mesh>) -> Services {
        Services {
            mesh,
            authority: None,
            authenticator: None,
            dashboard: None,
        }
    }

    /// The dashboard's bound address, told to `wasmesh dashboard`.
    pub fn with_dashboard(self, address: std::net::SocketAddr) -> Services {
        Services {
            dashboard: Some(address),
            ..self
        }
    }

    pub fn with_authority(
        self,
        authority: tokio::sync::watch::Receiver<Arc<Authority>>,
    ) -> Services {
        Services {
            authority: Some(authority),
            ..self
        }
    }

    /// Proxies must prove the namespace and service account their Hello claims with its
    /// token, checked by `authenticator` (reviews kept for a minute): without proof, no
    /// config and no certificate.
    pub fn with_authenticator(self, authenticator: Arc<dyn Authenticate>) -> Services {
        Services {
            authenticator: Some(Arc::new(Authenticator::new(authenticator))),
            ..self
        }
    }

    /// Refuses a Hello whose token does not prove the identity its node claims (when proof
    /// is asked for). Logged: a proxy claiming another's identity is worth an operator's look.
    async fn authenticate(&self, token: &str, node: &mut Node) -> Result<(), Status> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(());
        };
        let claimed = format!("{}/{}", node.namespace, node.service_account);
        let refused = if token.is_empty() {
            Status::unauthenticated(format!(
                "{claimed}: no token; this control plane needs the pod's service-account \
                 token (the sidecar's --token-file)"
            ))
        } else {
            match authenticator.authenticate(token).await {
                Ok(w)
                    if w.namespace == node.namespace
                        && w.service_account == node.service_account =>
                {
                    match authenticator.attest(node) {
                        Ok(()) => return Ok(()),
                        Err(e @ AuthError::Invalid(_)) => {
                            Status::permission_denied(format!("{claimed}: {e}"))
                        }
                        Err(e @ AuthError::Unavailable(_)) => {
                            Status::unavailable(format!("{claimed}: {e}"))
                        }
                    }
                }
                Ok(w) => Status::permission_denied(format!(
                    "the token is service account {w}'s, the Hello claims {claimed}"
                )),
                Err(e @ AuthError::Invalid(_)) => {
                    Status::unauthenticated(format!("{claimed}: token refused: {e}"))
                }
                Err(e @ AuthError::Unavailable(_)) => {
                    Status::unavailable(format!("{claimed}: {e}"))
                }
            }
        };
        tracing::warn!(proxy = %node.id(), code = ?refused.code(), error = %refused.message(), "proxy refused");
        Err(refused)
    }

    /// The tonic router with both services, each message capped at [`api::MAX_MESSAGE`].
    pub fn router(self) -> tonic::transport::server::Router {
        let config = api::mesh_config_server::MeshConfigServer::new(self.clone())
            .max_decoding_message_size(api::MAX_MESSAGE)
            .max_encoding_message_size(api::MAX_MESSAGE);
        let admin = api::mesh_admin_server::MeshAdminServer::new(self);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .add_service(config)
            .add_service(admin)
    }
}

fn node_from(n: api::Node) -> Node {
    Node {
        name: n.name,
        namespace: n.namespace,
        labels: n.labels.into_iter().collect(),
        service_account: n.service_account,
        outbound_address: n.outbound_address,
        pod_ip: n.pod_ip,
        metrics_address: n.metrics_address,
        gateway_ports: n
            .gateway_ports
            .into_iter()
            .map(|p| crate::sidecar::GatewayPort {
                port: p.port,
                listen_address: p.listen_address,
            })
            .collect(),
        inbound: n
            .inbound
            .into_iter()
            .map(|p| InboundPort {
                port: p.port,
                listen_address: p.listen_address,
                app_address: p.app_address,
            })
            .collect(),
    }
}

/// Where the control plane can scrape a proxy's metrics, from what its Hello says: an
/// unspecified IP is the pod's (or the stream's peer's); a loopback one is reachable only from
/// this host; a sidecar of a pod serves them at the pod's IP, and nowhere else is scraped on
/// its word. Empty: none to scrape.
fn reachable_metrics(node: &Node, peer: Option<std::net::IpAddr>) -> String {
    let Ok(mut address) = node.metrics_address.parse::<std::net::SocketAddr>() else {
        return String::new();
    };
    let pod_ip = node.pod_ip.parse::<std::net::IpAddr>().ok();
    if address.ip().is_unspecified() {
        match pod_ip.or(peer) {
            Some(ip) => address.set_ip(ip),
            None => return String::new(),
        }
    }
    let reachable = match pod_ip {
        Some(pod) => address.ip() == pod,
        None => !address.ip().is_loopback() || peer.is_none_or(|p| p.is_loopback()),
    };
    if reachable {
        address.to_string()
    } else {
        String::new()
    }
}

fn control(kind: api::control_message::Kind) -> api::ControlMessage {
    api::ControlMessage { kind: Some(kind) }
}

/// The answer to a proxy's CSR: signed for the identity its Hello named, or refused (and
/// logged: a proxy asking for another identity is worth an operator's look).
fn sign(
    proxy: &str,
    authority: Option<&Authority>,
    (namespace, service_account): &(String, String),
    request: &api::CertificateRequest,
) -> api::Certificate {
    let lifetime = (request.validity_seconds > 0)
        .then(|| std::time::Duration::from_secs(request.validity_seconds));
    let signed = match authority {
        Some(a) => a
            .sign_pem(&request.csr_pem, namespace, service_account, lifetime)
            .map_err(|e| e.to_string()),
        None => Err("this control plane runs no CA".to_owned()),
    };
    match signed {
        Ok(cert_chain_pem) => {
            tracing::debug!(%proxy, "certificate signed");
            api::Certificate {
                id: request.id,
                cert_chain_pem,
                error: String::new(),
            }
        }
        Err(error) => {
            tracing::warn!(%proxy, %error, "certificate request refused");
            api::Certificate {
                id: request.id,
                cert_chain_pem: Vec::new(),
                error,
            }
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl api::mesh_config_server::MeshConfig for Services {
    type SyncStream = BoxStream<api::ControlMessage>;
    type GetModuleStream = BoxStream<api::ModuleChunk>;

    async fn sync(
        &self,
        request: Request<Streaming<api::ProxyMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let mut incoming = request.into_inner();
        let hello = match incoming.message().await? {
            Some(api::ProxyMessage {
                kind: Some(api::proxy_message::Kind::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ));
            }
        };
        let mut node = node_from(
            hello
                .node
                .ok_or_else(|| Status::invalid_argument("hello.node is required"))?,
        );
        node.check()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Before it joins: a refused proxy is no endpoint, and gets no config and no certificate.
        self.authenticate(&hello.token, &mut node).await?;
        node.metrics_address = reachable_metrics(&node, peer);
        let id = node.id();
        let workload = (node.namespace.clone(), node.service_account.clone());
        let (connection, snapshots, state) = self.mesh.join(node).map_err(|e| match e {
            JoinError::AlreadyConnected(_) => Status::already_exists(e.to_string()),
        })?;
        tracing::info!(proxy = %id, version = %hello.version, "proxy connected");

        // The trust bundle first, so the proxy can ask for its certificate at once, and again
        // whenever the CA's roots change.
        let bundle = |a: &Authority| {
            control(api::control_message::Kind::TrustBundle(api::TrustBundle {
                trust_domain: a.trust_domain.clone(),
                roots_pem: a.roots_pem(),
            }))
        };
        let trust = self.authority.clone().map(|rx| {
            let first = bundle(&rx.borrow());
            let mut sent = first.clone();
            let changes = WatchStream::from_changes(rx).filter_map(move |a| {
                let next = bundle(&a);
                (next != sent).then(|| {
                    sent = next.clone();
                    Ok(next)
                })
            });
            (first, changes)
        });
        // Pushes: the latest snapshot whenever it changes (a proxy that does not read its
        // stream gets the latest when it reads again). The stream ends when the proxy leaves.
        let push_state = state.clone();
        let mut nonce = 0u64;
        let pushes = WatchStream::new(snapshots).filter_map(move |snapshot| {
            let s = snapshot?;
            nonce += 1;
            let mut st = push_state.lock().unwrap_or_else(|e| e.into_inner());
            st.sent_version = s.version.clone();
            st.sent_nonce = nonce.to_string();
            Some(Ok(control(api::control_message::Kind::Snapshot(
                api::Snapshot {
                    version: s.version.clone(),
                    nonce: st.sent_nonce.clone(),
                    bootstrap_json: s.bootstrap_json.clone(),
                    modules: s
                        .modules
                        .iter()
                        .map(|(sha256, size)| api::Module {
                            sha256: sha256.clone(),
                            size: *size,
                        })
                        .collect(),
                    shared: Some(api::SharedRef {
                        sha256: s.shared.sha256.clone(),
                        size: s.shared.bootstrap_json.len() as u64,
                    }),
                },
            ))))
        });
        // Certificates, as the proxy's requests are signed.
        let (certificates_tx, certificates) = tokio::sync::mpsc::channel(2);
        let certificates = tokio_stream::wrappers::ReceiverStream::new(certificates);
        let out: BoxStream<api::ControlMessage> = match trust {
            Some((first, changes)) => Box::pin(
                tokio_stream::once(Ok(first)).chain(changes.merge(pushes).merge(certificates)),
            ),
            None => Box::pin(pushes.merge(certificates)),
        };

        // ACKs, NACKs and CSRs, until the stream ends.
        let mesh = self.mesh.clone();
        let authority = self.authority.clone();
        tokio::spawn(async move {
            loop {
                let kind = match incoming.message().await {
                    Ok(Some(api::ProxyMessage { kind: Some(kind) })) => kind,
                    Ok(Some(_)) => {
                        tracing::warn!(proxy = %id, "empty message on the stream: ignored");
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(proxy = %id, error = %e, "stream error");
                        break;
                    }
                };
                match kind {
                    api::proxy_message::Kind::Ack(ack) => {
                        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                        if ack.nonce != st.sent_nonce {
                            continue; // an answer to an older push
                        }
                        if ack.error.is_empty() {
                            st.acked_version = ack.version;
                            st.nack = None;
                        } else {
                            tracing::warn!(proxy = %id, version = %ack.version, error = %ack.error, "proxy rejected its config (NACK)");
                            st.nack = Some(ack.error);
                        }
                    }
                    api::proxy_message::Kind::CertificateRequest(request) => {
                        let current = authority.as_ref().map(|rx| rx.borrow().clone());
                        let answer = sign(&id, current.as_deref(), &workload, &request);
                        let message = control(api::control_message::Kind::Certificate(answer));
                        if certificates_tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    api::proxy_message::Kind::Hello(_) => {
                        tracing::warn!(proxy = %id, "a second Hello on the stream: ignored")
                    }
                }
            }
            mesh.leave(&id, connection);
            tracing::info!(proxy = %id, "proxy disconnected");
        });
        Ok(Response::new(out))
    }

    async fn get_module(
        &self,
        request: Request<api::ModuleRequest>,
    ) -> Result<Response<Self::GetModuleStream>, Status> {
        let sha = request.into_inner().sha256;
        let module = self
            .mesh
            .modules
            .get(&sha)
            .ok_or_else(|| Status::not_found(format!("no module with sha256 {sha}")))?;
        let chunks: Vec<Result<api::ModuleChunk, Status>> = module
            .chunks(api::MODULE_CHUNK)
            .map(|c| Ok(api::ModuleChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn get_shared(
        &self,
        request: Request<api::SharedRequest>,
    ) -> Result<Response<api::SharedPart>, Status> {
        let sha = request.into_inner().sha256;
        // Only the current parts: a proxy asking for an older one has a newer push coming.
        let part = self.mesh.shared_part(&sha).ok_or_else(|| {
            Status::not_found(format!("no current shared part with sha256 {sha}"))
        })?;
        Ok(Response::new(api::SharedPart {
            bootstrap_json: part.bootstrap_json.clone(),
        }))
    }
}

#[tonic::async_trait]
impl api::mesh_admin_server::MeshAdmin for Services {
    async fn proxy_status(
        &self,
        _request: Request<api::ProxyStatusRequest>,
    ) -> Result<Response<api::ProxyStatusReply>, Status> {
        let (generation, diagnostics) = self.mesh.diagnostics();
        let proxies = self
            .mesh
            .status()
            .into_iter()
            .map(|(id, node, since, st)| api::ProxyStatus {
                id,
                state: st.state().to_owned(),
                sent_version: st.sent_version,
                acked_version: st.acked_version,
                error: st.nack.unwrap_or_default(),
                outbound_address: node.outbound_address,
                connected_seconds: since.elapsed().as_secs(),
            })
            .collect();
        Ok(Response::new(api::ProxyStatusReply {
            proxies,
            sources_version: generation.to_string(),
            diagnostics: diagnostics.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn dashboard(
        &self,
        _request: Request<api::DashboardRequest>,
    ) -> Result<Response<api::DashboardReply>, Status> {
        Ok(Response::new(api::DashboardReply {
            address: self.dashboard.map(|a| a.to_string()).unwrap_or_default(),
        }))
    }

    async fn proxy_config(
        &self,
        request: Request<api::ProxyConfigRequest>,
    ) -> Result<Response<api::ProxyConfigReply>, Status> {
        let id = request.into_inner().id;
        let id = if id.contains('.') {
            id
        } else {
            format!("{id}.default")
        };
        let s = self
            .mesh
            .snapshot_of(&id)
            .ok_or_else(|| Status::not_found(format!("no proxy {id}")))?;
        let bootstrap = s
            .bootstrap()
            .map_err(|e| Status::internal(format!("{id}'s snapshot does not read back: {e}")))?;
        Ok(Response::new(api::ProxyConfigReply {
            version: s.version.clone(),
            bootstrap_json: serde_json::to_string(&bootstrap)
                .map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures_util::future::BoxFuture;

    use crate::authn::Workload;
    use crate::ca::Ca;
    use crate::images::puller::PullerOptions;
    use crate::mesh::MeshOptions;
    use crate::source::SourceState;
    use crate::{Options, PluginModule, PluginModules};

    /// Knows its tokens' workloads; counts its reviews.
    struct Tokens(HashMap<&'static str, Workload>, AtomicUsize);

    impl Authenticate for Tokens {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Workload, AuthError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let found = self.0.get(token).cloned();
            Box::pin(async move {
                found.ok_or_else(|| AuthError::Invalid("[invalid bearer token]".into()))
            })
        }
    }

    fn workload(namespace: &str, service_account: &str) -> Workload {
        Workload {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// A control plane on a loopback port with an empty mesh, its CA in `dir`, proxies
    /// proven by `tokens` if given; its address and its mesh.
    async fn serve(dir: &std::path::Path, tokens: Option<Arc<Tokens>>) -> (String, Arc<Mesh>) {
        let module = |name: &str| {
            let path = dir.join(name);
            std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
            PluginModule::new(path.display().to_string())
        };
        let options = MeshOptions {
            translate: Options::default(),
            plugins: PluginModules {
                router: module("router.wasm"),
                fault: module("fault.wasm"),
                mirror: module("mirror.wasm"),
                circuit_breaker: module("circuit_breaker.wasm"),
                authz: module("authz.wasm"),
            },
            data_dir: None,
            grace: Duration::from_secs(1),
            images: PullerOptions::default(),
        };
        let (_, source) = tokio::sync::watch::channel(Arc::new(SourceState::default()));
        let mesh = Mesh::start(options, source).unwrap();
        let authority = Authority {
            ca: Arc::new(Ca::self_signed_in(&dir.join("ca"), "cluster.local").unwrap()),
            trust_domain: "cluster.local".into(),
            default_lifetime: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(3600),
        };
        let mut services = Services::new(mesh.clone())
            .with_authority(tokio::sync::watch::channel(Arc::new(authority)).1);
        if let Some(tokens) = tokens {
            services = services.with_authenticator(tokens);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(services.router().serve_with_incoming(incoming));
        (format!("http://{address}"), mesh)
    }

    /// Opens a stream as proxy `name` of `default/<service_account>` with `token`, and asks
    /// for a certificate for that identity at once.
    async fn connect(
        address: &str,
        name: &str,
        service_account: &str,
        token: &str,
    ) -> Result<Streaming<api::ControlMessage>, Status> {
        let mut client = api::mesh_config_client::MeshConfigClient::connect(address.to_owned())
            .await
            .unwrap();
        let hello = api::Hello {
            node: Some(api::Node {
                name: name.into(),
                namespace: "default".into(),
                service_account: service_account.into(),
                outbound_address: "127.0.0.1:1".into(),
                ..Default::default()
            }),
            version: String::new(),
            token: token.into(),
        };
        let identity = api::spiffe_id("cluster.local", "default", service_account);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let messages = [
            api::proxy_message::Kind::Hello(hello),
            api::proxy_message::Kind::CertificateRequest(api::CertificateRequest {
                csr_pem,
                validity_seconds: 0,
                id: 1,
            }),
        ]
        .map(|kind| api::ProxyMessage { kind: Some(kind) });
        // Kept open: the stream ends when the proxy's side does.
        let outgoing = tokio_stream::iter(messages).chain(tokio_stream::pending());
        Ok(client.sync(outgoing).await?.into_inner())
    }

    /// The stream's first snapshot and certificate.
    async fn snapshot_and_certificate(
        stream: &mut Streaming<api::ControlMessage>,
    ) -> (api::Snapshot, api::Certificate) {
        let (mut snapshot, mut certificate) = (None, None);
        while snapshot.is_none() || certificate.is_none() {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.message());
            match next.await.expect("in time").unwrap().expect("open").kind {
                Some(api::control_message::Kind::Snapshot(s)) => snapshot = Some(s),
                Some(api::control_message::Kind::Certificate(c)) => certificate = Some(c),
                _ => {}
            }
        }
        (snapshot.unwrap(), certificate.unwrap())
    }

    fn san(chain: &[String]) -> String {
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        match &san.value.general_names[..] {
            [x509_parser::extensions::GeneralName::URI(uri)] => (*uri).to_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_proving_its_identity_gets_config_and_certificate_others_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(Tokens(
            HashMap::from([
                ("reviews-token", workload("default", "reviews")),
                ("ratings-token", workload("default", "ratings")),
                ("other-ns-token", workload("shop", "reviews")),
            ]),
            AtomicUsize::new(0),
        ));
        let (address, mesh) = serve(dir.path(), Some(tokens.clone())).await;

        let mut stream = connect(&address, "reviews-0", "reviews", "reviews-token")
            .await
            .expect("admitted");
        let (snapshot, certificate) = snapshot_and_certificate(&mut stream).await;
        assert!(!snapshot.bootstrap_json.is_empty());
        assert_eq!(certificate.error, "");
        assert_eq!(
            san(&certificate.cert_chain_pem),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );

        let refused = [
            // Another service account's token, and the same one in another namespace.
            (
                "ratings-token",
                tonic::Code::PermissionDenied,
                "default/ratings",
            ),
            (
                "other-ns-token",
                tonic::Code::PermissionDenied,
                "shop/reviews",
            ),
            ("", tonic::Code::Unauthenticated, "no token"),
            (
                "forged",
                tonic::Code::Unauthenticated,
                "[invalid bearer token]",
            ),
        ];
        for (token, code, says) in refused {
            let status = connect(&address, "impostor-0", "reviews", token)
                .await
                .expect_err(token);
            assert_eq!(status.code(), code, "{token:?}: {status:?}");
            assert!(status.message().contains(says), "{token:?}: {status:?}");
            assert!(
                status.message().contains("default/reviews"),
                "the claim is named: {status:?}"
            );
        }
        let proxies: Vec<String> = mesh.status().into_iter().map(|(id, ..)| id).collect();
        assert_eq!(
            proxies,
            ["reviews-0.default"],
            "a refused proxy never joins"
        );

        // Reconnects within the minute are not reviewed again; the empty token never was.
        let reviews_before = tokens.1.load(Ordering::SeqCst);
        let mut again = connect(&address, "reviews-1", "reviews", "reviews-token")
            .await
            .expect("admitted");
        snapshot_and_certificate(&mut again).await;
        assert_eq!(tokens.1.load(Ordering::SeqCst), reviews_before);
        assert_eq!(reviews_before, 4);
    }

    #[test]
    fn metrics_are_scraped_only_where_the_control_plane_reaches_the_proxy() {
        let node = |metrics: &str, pod_ip: &str| Node {
            metrics_address: metrics.into(),
            pod_ip: pod_ip.into(),
            ..Node::default()
        };
        let local = Some("127.0.0.1".parse().unwrap());
        let remote = Some("10.0.0.9".parse().unwrap());
        let cases = [
            // On this host: as given.
            (node("127.0.0.1:15000", ""), local, "127.0.0.1:15000"),
            // Every address: the peer's, or the pod's.
            (node("0.0.0.0:15000", ""), remote, "10.0.0.9:15000"),
            (node("0.0.0.0:15000", "10.0.0.7"), remote, "10.0.0.7:15000"),
            // A loopback admin of another host, or of a pod: out of reach.
            (node("127.0.0.1:15000", ""), remote, ""),
            (node("127.0.0.1:15000", "10.0.0.7"), local, ""),
            // A pod's metrics are at its IP, nowhere else.
            (node("10.0.0.7:15020", "10.0.0.7"), remote, "10.0.0.7:15020"),
            (node("10.0.0.8:15020", "10.0.0.7"), remote, ""),
            (node("", ""), local, ""),
        ];
        for (node, peer, want) in cases {
            assert_eq!(
                reachable_metrics(&node, peer),
                want,
                "{node:?} from {peer:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_an_authenticator_the_hello_is_taken_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (address, _mesh) = serve(dir.path(), None).await;
        let mut stream = connect(&address, "reviews-0", "reviews", "")
            .await
            .expect("admitted");
        let (_, certificate) = snapshot_and_certificate(&mut stream).await;
        assert_eq!(
            san(&certificate.cert_chain_pem),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
    }
}
