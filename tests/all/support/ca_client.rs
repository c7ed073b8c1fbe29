//! A workload's stream to the control plane's CA, opened by hand as a sidecar opens it: for
//! tests that ask for certificates themselves.

use std::path::{Path, PathBuf};

use wasmesh_api as api;

pub struct CaStream {
    tx: tokio::sync::mpsc::Sender<api::ProxyMessage>,
    messages: tonic::Streaming<api::ControlMessage>,
    /// The trust bundle the control plane sent first.
    pub trust: api::TrustBundle,
}

impl CaStream {
    /// A stream for workload `name` in namespace `default` running as `service_account`.
    pub async fn open(address: &str, name: &str, service_account: &str) -> CaStream {
        let mut client =
            api::mesh_config_client::MeshConfigClient::connect(format!("http://{address}"))
                .await
                .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(api::ProxyMessage {
            kind: Some(api::proxy_message::Kind::Hello(api::Hello {
                node: Some(api::Node {
                    name: name.into(),
                    namespace: "default".into(),
                    service_account: service_account.into(),
                    outbound_address: "127.0.0.1:1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut messages = client
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = messages.message().await.unwrap().unwrap();
        let Some(api::control_message::Kind::TrustBundle(trust)) = first.kind else {
            panic!("the trust bundle comes first, got {first:?}");
        };
        CaStream {
            tx,
            messages,
            trust,
        }
    }

    /// Sends a CSR (PEM) and waits for the answer.
    pub async fn ask(
        &mut self,
        csr_pem: String,
        validity_seconds: u64,
        id: u64,
    ) -> api::Certificate {
        self.tx
            .send(api::ProxyMessage {
                kind: Some(api::proxy_message::Kind::CertificateRequest(
                    api::CertificateRequest {
                        csr_pem,
                        validity_seconds,
                        id,
                    },
                )),
            })
            .await
            .unwrap();
        loop {
            let m = self
                .messages
                .message()
                .await
                .unwrap()
                .expect("the stream stays");
            if let Some(api::control_message::Kind::Certificate(c)) = m.kind {
                assert_eq!(c.id, id);
                return c;
            }
        }
    }
}

/// A new key pair and a CSR (PEM) whose SANs are `uris`.
pub fn csr(uris: &[&str]) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
        .collect();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

/// A client certificate for `id` signed by the control plane's own root (in `ca_dir`), one
/// that expired in 2021 or one valid now, written as PEM files in `dir`.
pub fn root_signed_svid(ca_dir: &Path, id: &str, dir: &Path, expired: bool) -> (PathBuf, PathBuf) {
    let root_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("root-key.pem")).unwrap())
            .unwrap();
    let root_pem = std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    let name = if expired { "expired" } else { "valid" };
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}
