//! A workload's stream to the control plane's CA, opened by hand as a sidecar opens it: for
//! tests that ask for certificates themselves.

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
                version: String::new(),
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
