use std::path::Path;

use wasmesh_config::TrafficDirection;

use super::*;
use crate::manifests::{Loaded, parse_str};
use crate::sidecar::{InboundPort, Node, translate_for};
use crate::source::LastGood;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads documents that must load cleanly (diagnostics below Error are allowed).
fn load(docs: &[&str]) -> Vec<Resource> {
    let loaded = parse_str(
        &docs.join("\n---\n"),
        Some(Path::new("mesh/telemetry.yaml")),
    );
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    loaded.resources
}

/// The translation's diagnostics, printed as `istioctl analyze` does.
fn diagnostics(loaded: &Loaded) -> Vec<String> {
    let t = crate::translate_loaded(loaded, &Options::default());
    t.diagnostics.iter().map(ToString::to_string).collect()
}

fn tracing_of(resources: &[Resource], namespace: &str, pairs: &[(&str, &str)]) -> Option<Tracing> {
    MeshTracing::new(resources).tracing(namespace, &labels(pairs))
}

fn otlp(endpoint: &str, secs: u64) -> Option<Otlp> {
    Some(Otlp {
        endpoint: endpoint.into(),
        timeout: Dur::secs(secs),
    })
}

const COLLECTOR: &str = "http://opentelemetry-collector.observability.svc.cluster.local:4317";

/// Istio's mesh config as a ConfigMap: the extension provider of its OpenTelemetry task (the
/// collector in `observability`), the zipkin one of its Telemetry API task, and a second
/// collector named `<namespace>/<host>` with a gRPC timeout.
const MESH_CONFIG: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  meshNetworks: |-
    networks: {}
  mesh: |-
    defaultConfig:
      discoveryAddress: istiod.istio-system.svc:15012
      tracing: {} # disable legacy MeshConfig tracing options
    extensionProviders:
    - name: otel-tracing
      opentelemetry:
        port: 4317
        service: opentelemetry-collector.observability.svc.cluster.local
    - name: "localtrace"
      zipkin:
        service: "zipkin.istio-system.svc.cluster.local"
        port: 9411
        maxTagLength: 56
    - name: team-b
      opentelemetry:
        port: 4317
        service: observability/collector-b.example.com
        grpc:
          timeout: 2s
    - name: prometheus
      prometheus: {}
"#;

/// Mesh-wide: Istio's root namespace, no selector.
const MESH_DEFAULT: &str = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  tracing:
  - providers:
    - name: otel-tracing
    randomSamplingPercentage: 10.00
";

/// Namespace-wide (as Istio's Telemetry API task's `namespace-override`, with a rate).
const NAMESPACE_OVERRIDE: &str = "apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata:
  name: namespace-override
  namespace: myapp
spec:
  tracing:
  - randomSamplingPercentage: 50
";

/// Istio's Telemetry API task's `workload-override`.
const WORKLOAD_OVERRIDE: &str = "apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata:
  name: workload-override
  namespace: myapp
spec:
  selector:
    matchLabels:
      service.istio.io/canonical-name: frontend
  tracing:
  - disableSpanReporting: true
";

/// A workload's own provider.
const REVIEWS_TO_TEAM_B: &str = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: reviews
  namespace: myapp
spec:
  selector:
    matchLabels:
      app: reviews
  tracing:
  - providers:
    - name: team-b
";

fn node(name: &str, namespace: &str, pairs: &[(&str, &str)]) -> Node {
    Node {
        name: name.into(),
        namespace: namespace.into(),
        labels: labels(pairs),
        service_account: "bookinfo-reviews".into(),
        outbound_address: "127.0.0.1:25000".into(),
        inbound: vec![InboundPort {
            port: 9080,
            listen_address: "127.0.0.1:25001".into(),
            app_address: "127.0.0.1:19080".into(),
        }],
        ..Node::default()
    }
}

#[test]
fn the_bootstrap_names_the_workload_its_identity_and_cluster() {
    let reviews = node(
        "reviews-v1-7d9f8c5b4-x2x9z",
        "default",
        &[
            ("app", "reviews"),
            ("version", "v1"),
            ("pod-template-hash", "7d9f8c5b4"),
        ],
    );
    let t = translate_for(&reviews, &[], &[], &Options::default());
    assert_eq!(
        t.bootstrap.telemetry.workload,
        Some(Workload {
            name: "reviews-v1-7d9f8c5b4-x2x9z".into(),
            namespace: "default".into(),
            workload_name: "reviews-v1".into(),
            service_account: "bookinfo-reviews".into(),
            principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews".into(),
            cluster_id: "Kubernetes".into(),
            labels: reviews.labels.clone(),
        })
    );
    // No Telemetry and no mesh config: no tracing.
    assert_eq!(t.bootstrap.telemetry.tracing, None);

    // The trust domain and cluster the control plane is configured with.
    let options = Options {
        trust_domain: "example.org".into(),
        cluster_id: "east".into(),
        ..Options::default()
    };
    let t = translate_for(&reviews, &[], &[], &options);
    t.bootstrap.validate().unwrap();
    let w = t.bootstrap.telemetry.workload.unwrap();
    assert_eq!(
        (w.principal.as_str(), w.cluster_id.as_str()),
        (
            "spiffe://example.org/ns/default/sa/bookinfo-reviews",
            "east"
        )
    );
    // Without a service account: Kubernetes' `default`, as its certificate says.
    let mut anonymous = reviews.clone();
    anonymous.service_account.clear();
    let w = translate_for(&anonymous, &[], &[], &options)
        .bootstrap
        .telemetry
        .workload
        .unwrap();
    assert_eq!(w.principal, "spiffe://example.org/ns/default/sa/default");
    assert_eq!(w.service_account, "");
}

#[test]
fn workload_names_are_istio_s() {
    /// A pod's name, its labels, and its workload's name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 11] = [
        // A Deployment's pod: the ReplicaSet's hash and the pod's suffix stripped.
        (
            "reviews-v1-7d9f8c5b4-x2x9z",
            &[("app", "reviews"), ("pod-template-hash", "7d9f8c5b4")],
            "reviews-v1",
        ),
        // The hash must be the pod's own.
        (
            "reviews-v1-7d9f8c5b4-x2x9z",
            &[("pod-template-hash", "5b8f7c9d4")],
            "reviews-v1-7d9f8c5b4-x2x9z",
        ),
        // Istio's override.
        (
            "reviews-v1-7d9f8c5b4-x2x9z",
            &[
                ("pod-template-hash", "7d9f8c5b4"),
                ("service.istio.io/workload-name", "reviews"),
            ],
            "reviews",
        ),
        // An Argo Rollout's.
        (
            "web-6c8d7f9b5-abcde",
            &[("rollouts-pod-template-hash", "6c8d7f9b5")],
            "web",
        ),
        // A StatefulSet's.
        (
            "db-2",
            &[
                ("statefulset.kubernetes.io/pod-name", "db-2"),
                ("controller-revision-hash", "db-5d8f9"),
            ],
            "db",
        ),
        // A DaemonSet's.
        (
            "node-agent-x7k2p",
            &[
                ("controller-revision-hash", "6f7d8c9b"),
                ("pod-template-generation", "3"),
            ],
            "node-agent",
        ),
        // A Job's, and a CronJob's Job (`<cronjob>-<minutes since the epoch>`).
        (
            "migrate-abcde",
            &[("batch.kubernetes.io/job-name", "migrate")],
            "migrate",
        ),
        (
            "report-28473120-abcde",
            &[("job-name", "report-28473120")],
            "report",
        ),
        // An OpenShift DeploymentConfig's.
        ("shop-3-abcde", &[("deploymentconfig", "shop")], "shop"),
        // A bare pod, and a workload outside Kubernetes (`wasmesh run`): its own name.
        ("debug", &[("app", "debug")], "debug"),
        (
            "reviews-v1",
            &[("app", "reviews"), ("version", "v1")],
            "reviews-v1",
        ),
    ];
    for (pod, pairs, expected) in cases {
        assert_eq!(
            workload_name(pod, &labels(pairs)),
            expected,
            "{pod} {pairs:?}"
        );
    }
}

#[test]
fn an_inbound_cluster_names_the_service_that_selects_the_workload_on_its_port() {
    let resources = load(&[
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zeta}
spec:
  hosts: [zeta.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-v2}
spec:
  hosts: [reviews-v2.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews, version: v2}}",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [api.example.com]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, targetPort: 15020}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: other}
spec:
  hosts: [reviews.other.svc.cluster.local]
  ports: [{number: 7070, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}",
    ]);
    let mut reviews = node(
        "reviews-v1",
        "default",
        &[("app", "reviews"), ("version", "v1")],
    );
    for (i, port) in [15020, 7070].into_iter().enumerate() {
        reviews.inbound.push(InboundPort {
            port,
            listen_address: format!("127.0.0.1:{}", 25002 + i),
            app_address: format!("127.0.0.1:{port}"),
        });
    }
    let mut with_registration = resources.clone();
    with_registration.extend(reviews.workload_entry());
    let t = translate_for(&reviews, &with_registration, &[], &Options::default());
    let service = |name: &str| {
        t.bootstrap
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
            .service
            .clone()
    };
    let kube = |host: &str, name: &str| ServiceRef {
        host: host.into(),
        name: name.into(),
        namespace: "default".into(),
    };
    // Two services select it on 9080: the first by host. reviews-v2 wants another version.
    assert_eq!(
        service("inbound|9080||"),
        Some(kube("reviews.default.svc.cluster.local", "reviews"))
    );
    // A port reached by its targetPort; a host that is no Kubernetes service is its own name.
    assert_eq!(
        service("inbound|15020||"),
        Some(kube("api.example.com", "api.example.com"))
    );
    // Only a service of another namespace: none.
    assert_eq!(service("inbound|7070||"), None);
    // Outbound clusters keep theirs.
    assert_eq!(
        service("outbound|9080||reviews.default.svc.cluster.local"),
        Some(kube("reviews.default.svc.cluster.local", "reviews"))
    );
}

#[test]
fn every_listener_of_a_transparent_sidecar_says_which_side_it_is_on() {
    let resources = load(&["apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: [10.96.0.9]
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9}]"]);
    let mut reviews = node("reviews-v1", "default", &[("app", "reviews")]);
    reviews.pod_ip = "10.0.0.5".into();
    let t = translate_for(&reviews, &resources, &[], &Options::default());
    let directions: Vec<(&str, Option<TrafficDirection>)> = t
        .bootstrap
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.traffic_direction))
        .collect();
    use TrafficDirection::{Inbound, Outbound};
    assert_eq!(
        directions,
        [
            ("outbound", Some(Outbound)),
            ("inbound|9080", Some(Inbound)),
            ("outbound|tcp|10.96.0.9:5432", Some(Outbound)),
            ("virtualOutbound", Some(Outbound)),
            ("virtualInbound", Some(Inbound)),
        ]
    );
}

#[test]
fn tracing_takes_the_mesh_s_then_the_namespace_s_then_the_workload_s() {
    let resources = load(&[
        MESH_CONFIG,
        MESH_DEFAULT,
        NAMESPACE_OVERRIDE,
        WORKLOAD_OVERRIDE,
        REVIEWS_TO_TEAM_B,
    ]);
    let tracing = |ns: &str, pairs: &[(&str, &str)]| tracing_of(&resources, ns, pairs);
    // Mesh-wide: its provider and rate.
    let mesh_wide = Some(Tracing {
        sampling: 10.0,
        otlp: otlp(COLLECTOR, 5),
    });
    assert_eq!(tracing("default", &[("app", "productpage")]), mesh_wide);
    assert_eq!(tracing("istio-system", &[("app", "istiod")]), mesh_wide);
    // The namespace's rate, the mesh's provider (field by field).
    assert_eq!(
        tracing("myapp", &[("app", "ratings")]),
        Some(Tracing {
            sampling: 50.0,
            otlp: otlp(COLLECTOR, 5),
        })
    );
    // The workload's provider (`<namespace>/` dropped, its gRPC timeout), the namespace's rate.
    assert_eq!(
        tracing("myapp", &[("app", "reviews")]),
        Some(Tracing {
            sampling: 50.0,
            otlp: otlp("http://collector-b.example.com:4317", 2),
        })
    );
    // disableSpanReporting: no span (headers pass through).
    assert_eq!(
        tracing(
            "myapp",
            &[
                ("app", "frontend"),
                ("service.istio.io/canonical-name", "frontend")
            ]
        ),
        None
    );

    // And in a sidecar's bootstrap.
    let reviews = node("reviews-v1", "myapp", &[("app", "reviews")]);
    let t = translate_for(&reviews, &resources, &[], &Options::default());
    assert_eq!(
        t.bootstrap.telemetry.tracing,
        tracing("myapp", &[("app", "reviews")])
    );
    t.bootstrap.validate().unwrap();
}

#[test]
fn selectors_of_the_root_namespace_and_target_refs_do_not_reach_other_sidecars() {
    let resources = load(&[
        MESH_CONFIG,
        MESH_DEFAULT,
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: istiod, namespace: istio-system}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing: [{randomSamplingPercentage: 99}]",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: gateway, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]
  tracing: [{randomSamplingPercentage: 98}]",
    ]);
    let sampling = |ns: &str| tracing_of(&resources, ns, &[("app", "reviews")]).map(|t| t.sampling);
    assert_eq!(sampling("default"), Some(10.0));
    // In the root namespace, its selector picks the root namespace's workloads.
    assert_eq!(sampling("istio-system"), Some(99.0));
}

#[test]
fn the_mesh_config_s_default_provider_and_sampling_apply_without_telemetry() {
    let mesh = |extra: &str| {
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: otel-tracing
      opentelemetry:
        port: 4317
        service: opentelemetry-collector.observability.svc.cluster.local
    - name: localtrace
      zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411}}
{extra}"
        )
    };
    // No default provider, no Telemetry: no tracing.
    assert_eq!(tracing_of(&load(&[&mesh("")]), "default", &[]), None);
    // A default provider: Istio's default rate, 1%.
    let with_default = mesh("    defaultProviders:\n      tracing: [otel-tracing]\n");
    assert_eq!(
        tracing_of(&load(&[&with_default]), "default", &[]),
        Some(Tracing {
            sampling: DEFAULT_SAMPLING,
            otlp: otlp(COLLECTOR, 5),
        })
    );
    // defaultConfig.tracing.sampling is the rate Telemetry falls back to.
    let sampled = mesh(
        "    defaultProviders:\n      tracing: [otel-tracing]\n    defaultConfig:\n      tracing:\n        sampling: 25\n",
    );
    assert_eq!(
        tracing_of(&load(&[&sampled]), "default", &[]).map(|t| t.sampling),
        Some(25.0)
    );
    // A Telemetry without providers takes the default one; with no default, there is none.
    let rate_only = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 5}]";
    assert_eq!(
        tracing_of(&load(&[&with_default, rate_only]), "default", &[]),
        Some(Tracing {
            sampling: 5.0,
            otlp: otlp(COLLECTOR, 5),
        })
    );
    assert_eq!(
        tracing_of(&load(&[&mesh(""), rate_only]), "default", &[]),
        None
    );
    // Names are matched ignoring case, as Istio does.
    let shouting = rate_only.replace(
        "[{randomSamplingPercentage: 5}]",
        "[{providers: [{name: OTEL-Tracing}]}]",
    );
    assert_eq!(
        tracing_of(&load(&[&mesh(""), &shouting]), "default", &[]).map(|t| t.otlp),
        Some(otlp(COLLECTOR, 5))
    );
    // A zipkin provider: spans are made and propagated, not exported.
    let zipkin = rate_only.replace(
        "[{randomSamplingPercentage: 5}]",
        "[{providers: [{name: localtrace}], randomSamplingPercentage: 100.00}]",
    );
    assert_eq!(
        tracing_of(&load(&[&mesh(""), &zipkin]), "default", &[]),
        Some(Tracing {
            sampling: 100.0,
            otlp: None,
        })
    );
    let printed = diagnostics(&parse_str(&mesh(""), Some(Path::new("istio.yaml"))));
    assert!(
        printed.iter().any(|d| d.starts_with(
            "Warning [WSM0002] (ConfigMap istio.istio-system istio.yaml:1) \
             data.mesh.extensionProviders[1].zipkin is not supported by wasmesh yet"
        )),
        "{printed:#?}"
    );
}

#[test]
fn other_config_maps_are_skipped_as_any_kind_wasmesh_does_not_translate() {
    let loaded = parse_str(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: default}
data: {mesh: 'not: [read'}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio-sidecar-injector, namespace: istio-system}
data: {config: x}",
        None,
    );
    assert!(loaded.resources.is_empty());
    let printed: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        printed,
        [
            "Info [WSM0001] (ConfigMap istio.default) ConfigMap (v1) is not translated by wasmesh: skipped",
            "Info [WSM0001] (ConfigMap istio-sidecar-injector.istio-system) ConfigMap (v1) is not translated by wasmesh: skipped",
        ]
    );
}

#[test]
fn a_bad_percentage_or_provider_is_reported_and_the_telemetry_left_out() {
    let text = [
        MESH_CONFIG,
        MESH_DEFAULT,
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: too-many
  namespace: default
spec:
  tracing:
  - randomSamplingPercentage: 150",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: typo
  namespace: prod
spec:
  tracing:
  - providers:
    - name: otel-tracin",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: metrics-provider
  namespace: staging
spec:
  tracing:
  - providers:
    - name: prometheus",
    ]
    .join("\n---\n");
    // The line of a document: its `apiVersion`, three lines above its name.
    let line = |name: &str| {
        text.lines()
            .position(|l| l == format!("  name: {name}"))
            .unwrap()
            - 2
    };
    let loaded = parse_str(&text, Some(Path::new("mesh/telemetry.yaml")));
    let printed = diagnostics(&loaded);
    for expected in [
        format!(
            "Error [IST0106] (Telemetry too-many.default mesh/telemetry.yaml:{}) Schema validation error: spec.tracing[0].randomSamplingPercentage: percentage 150 is not in range 0..100",
            line("too-many")
        ),
        format!(
            "Error [IST0101] (Telemetry typo.prod mesh/telemetry.yaml:{}) Referenced provider not found: \"otel-tracin\" in the mesh config's extensionProviders: the Telemetry is left out",
            line("typo")
        ),
        format!(
            "Error [IST0106] (Telemetry metrics-provider.staging mesh/telemetry.yaml:{}) Schema validation error: spec.tracing[0].providers[0].name: provider \"prometheus\" is a prometheus provider, which does not trace: the Telemetry is left out",
            line("metrics-provider")
        ),
    ] {
        assert!(
            printed.contains(&expected),
            "{expected}\nnot in {printed:#?}"
        );
    }
    let t = crate::translate_loaded(&loaded, &Options::default());
    let fields: Vec<_> = t.errors().map(|d| d.field.as_deref().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "spec.tracing[0].randomSamplingPercentage",
            "spec.tracing[0].providers[0].name",
            "spec.tracing[0].providers[0].name",
        ]
    );
    // Left out: those namespaces have the mesh's tracing.
    for ns in ["default", "prod", "staging"] {
        assert_eq!(
            tracing_of(&loaded.resources, ns, &[]),
            Some(Tracing {
                sampling: 10.0,
                otlp: otlp(COLLECTOR, 5),
            }),
            "{ns}"
        );
    }
    // Without a mesh config, the hint says where providers are defined.
    let alone = parse_str(&text[text.find("apiVersion: telemetry").unwrap()..], None);
    assert!(diagnostics(&alone).iter().any(|d| d.contains(
        "Referenced provider not found: \"otel-tracing\" (there is no mesh config: the \
             ConfigMap istio-system/istio with `data.mesh`)"
    )));
}

#[test]
fn unsupported_telemetry_fields_are_reported() {
    // Istio's OpenTelemetry task, and a selector for one side.
    let loaded = parse_str(
        ("apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata:
  name: otel-demo
  namespace: istio-system
spec:
  tracing:
  - providers:
    - name: otel-tracing
    randomSamplingPercentage: 100
    customTags:
      \"my-attribute\":
        literal:
          value: \"default-value\"
  - match: {mode: SERVER}
    disableSpanReporting: true
  metrics:
  - providers: [{name: prometheus}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: other, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 1}]
---
apiVersion: telemetry.istio.io/v1beta1
kind: Telemetry
metadata: {name: future, namespace: default}
spec: {}
---
"
        .to_owned()
            + MESH_CONFIG)
            .as_str(),
        Some(Path::new("t.yaml")),
    );
    let printed = diagnostics(&loaded);
    for expected in [
        "Warning [WSM0002] (Telemetry otel-demo.istio-system t.yaml:1) spec.tracing[0].customTags is not supported by wasmesh yet: spans carry no custom tags",
        "Warning [WSM0002] (Telemetry otel-demo.istio-system t.yaml:1) spec.tracing[1].match.mode is not supported by wasmesh yet: a sidecar has one tracing configuration for its client and server sides: this entry applies to both",
        "Warning [WSM0002] (Telemetry otel-demo.istio-system t.yaml:1) spec.metrics is not supported by wasmesh yet: ignored: Istio's standard metrics are always reported",
        "Warning [WSM0005] (Telemetry other.istio-system t.yaml:20) Telemetry otel-demo.istio-system also applies to the whole namespace istio-system and comes first (Istio takes the oldest; without creation times, the first by name): this one is ignored",
        "Error [IST0106] (Telemetry future.default t.yaml:26) Schema validation error: apiVersion \"telemetry.istio.io/v1beta1\" is not served (use telemetry.istio.io/v1, telemetry.istio.io/v1alpha1)",
    ] {
        assert!(
            printed.iter().any(|d| d == expected),
            "{expected}\nnot in {printed:#?}"
        );
    }
}

/// A mesh config with `text` as its `data.mesh`.
fn mesh_config(text: &str) -> String {
    let indented: String = text.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |
{indented}"
    )
}

#[test]
fn a_malformed_mesh_config_names_its_file_line_and_field() {
    let bad = mesh_config(
        "extensionProviders:
- name: otel-tracing
  opentelemetry:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: four",
    );
    let loaded = parse_str(&bad, Some(Path::new("mesh/istio.yaml")));
    assert!(loaded.resources.is_empty());
    let [d] = &loaded.diagnostics[..] else {
        panic!("{:#?}", loaded.diagnostics);
    };
    assert_eq!(
        d.field.as_deref(),
        Some("data.mesh.extensionProviders[0].opentelemetry.port")
    );
    // `port: four` is the file's 12th line.
    assert_eq!(bad.lines().nth(11).map(str::trim), Some("port: four"));
    assert_eq!(
        d.origin(),
        "ConfigMap istio.istio-system mesh/istio.yaml:12"
    );
    assert!(
        d.is_error() && d.code == code::SCHEMA_VALIDATION_ERROR,
        "{d}"
    );
    assert!(
        d.message.starts_with(
            "Schema validation error: data.mesh.extensionProviders[0].opentelemetry.port: "
        ),
        "{d}"
    );

    // What Istio's validation refuses.
    let invalid = mesh_config(
        "defaultProviders:
  tracing: [otel, otel-tracing]
defaultConfig:
  tracing:
    sampling: 101
extensionProviders:
- name: otel-tracing
  opentelemetry: {service: '', port: 0}
- name: OTEL-tracing
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
  datadog: {service: datadog.istio-system.svc.cluster.local, port: 8126}
- name: nothing
- name: prom
  prometheus: {}
extensionProvider: []",
    );
    let loaded = parse_str(&invalid, Some(Path::new("mesh/istio.yaml")));
    let printed = diagnostics(&loaded);
    let at = "(ConfigMap istio.istio-system mesh/istio.yaml:1)";
    for expected in [
        format!(
            "Error [IST0106] {at} Schema validation error: data.mesh.extensionProviders[0].opentelemetry.service: must be set"
        ),
        format!(
            "Error [IST0106] {at} Schema validation error: data.mesh.extensionProviders[0].opentelemetry.port: must be a port, 1 to 65535"
        ),
        format!(
            "Error [IST0106] {at} Schema validation error: data.mesh.extensionProviders[1].name: \"OTEL-tracing\": a provider of that name comes before"
        ),
        format!(
            "Error [IST0106] {at} Schema validation error: data.mesh.extensionProviders[1]: only one provider may be set, not zipkin and datadog"
        ),
        format!(
            "Error [IST0106] {at} Schema validation error: data.mesh.extensionProviders[2]: one provider is required (opentelemetry, zipkin, datadog, ...)"
        ),
        format!(
            "Error [IST0101] {at} Referenced provider not found: \"otel\" in extensionProviders"
        ),
        format!(
            "Error [IST0106] {at} Schema validation error: data.mesh.defaultConfig.tracing.sampling: percentage 101 is not in range 0..100"
        ),
        format!(
            "Warning [WSM0002] {at} data.mesh.extensionProvider is not supported by wasmesh yet: unknown field: ignored (as Istio does)"
        ),
    ] {
        assert!(
            printed.contains(&expected),
            "{expected}\nnot in {printed:#?}"
        );
    }
    // Left out: nothing traces.
    assert_eq!(tracing_of(&loaded.resources, "default", &[]), None);
}

#[test]
fn a_mesh_config_that_turns_bad_keeps_its_last_good_version() {
    let good = mesh_config(
        "defaultProviders: {tracing: [otel-tracing]}
extensionProviders:
- name: otel-tracing
  opentelemetry:
    port: 4317
    service: opentelemetry-collector.observability.svc.cluster.local",
    );
    let mut keeper = LastGood::default();
    let first = keeper.apply(parse_str(&good, None));
    let expected = Some(Tracing {
        sampling: DEFAULT_SAMPLING,
        otlp: otlp(COLLECTOR, 5),
    });
    assert_eq!(tracing_of(&first.resources, "default", &[]), expected);

    // YAML that does not parse, then a port out of range: the last good one stays.
    for broken in [
        good.replace("port: 4317", "port: [4317"),
        good.replace("port: 4317", "port: 0"),
    ] {
        let next = keeper.apply(parse_str(&broken, None));
        assert!(next.diagnostics.iter().any(|d| d.is_error()));
        assert!(
            next.diagnostics.iter().any(|d| d
                .to_string()
                .contains("its last good version stays in effect")),
            "{:#?}",
            next.diagnostics
        );
        assert_eq!(tracing_of(&next.resources, "default", &[]), expected);
    }
}

#[test]
fn istio_s_operator_style_mesh_config_loads_clean() {
    // As `istioctl install` writes it for the Telemetry API task: legacy options cleared.
    let loaded = parse_str(
        &mesh_config(
            "accessLogFile: /dev/stdout
enableTracing: true
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  tracing: {}
defaultProviders:
  metrics: [prometheus]
extensionProviders:
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
rootNamespace: istio-system
trustDomain: cluster.local",
        ),
        None,
    );
    let t = crate::translate_loaded(&loaded, &Options::default());
    assert!(t.errors().next().is_none(), "{:#?}", t.diagnostics);
    let Some(Resource {
        spec: Spec::MeshConfig(m),
        ..
    }) = loaded.resources.first()
    else {
        panic!("{:#?}", loaded.resources)
    };
    assert_eq!(m.enable_tracing, Some(true));
    assert_eq!(m.extension_providers[0].kinds(), ["zipkin"]);
    let printed: Vec<String> = t.diagnostics.iter().map(|d| d.message.clone()).collect();
    assert!(
        !printed.iter().any(|m| m.contains("unknown field")),
        "{printed:#?}"
    );
}

#[test]
fn a_telemetry_that_turns_to_an_unknown_provider_keeps_its_last_good_version() {
    let workload = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: reviews
  namespace: myapp
spec:
  selector:
    matchLabels:
      app: reviews
  tracing:
  - providers:
    - name: team-b
    randomSamplingPercentage: 20";
    let mut keeper = LastGood::default();
    let docs = |telemetry: &str| {
        parse_str(
            &[MESH_CONFIG, MESH_DEFAULT, telemetry].join("\n---\n"),
            Some(Path::new("mesh.yaml")),
        )
    };
    let first = keeper.apply(docs(workload));
    let good = Some(Tracing {
        sampling: 20.0,
        otlp: otlp("http://collector-b.example.com:4317", 2),
    });
    assert_eq!(
        tracing_of(&first.resources, "myapp", &[("app", "reviews")]),
        good
    );

    // A typo in the provider's name: reported with its field, the last good version stays.
    let typo = keeper.apply(docs(&workload.replace("team-b", "team-c")));
    assert_eq!(
        tracing_of(&typo.resources, "myapp", &[("app", "reviews")]),
        good
    );
    let printed: Vec<String> = typo.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        printed.iter().any(|d| d
            .starts_with("Error [IST0101] (Telemetry reviews.myapp mesh.yaml:")
            && d.contains("Referenced provider not found: \"team-c\"")),
        "{printed:#?}"
    );
    assert!(
        printed
            .iter()
            .any(|d| d.contains("its last good version stays in effect")),
        "{printed:#?}"
    );
    let t = crate::translate_loaded(&typo, &Options::default());
    assert_eq!(t.errors().count(), 1, "{:#?}", t.diagnostics);

    // Never good: left out, reported by the translation.
    let fresh = LastGood::default().apply(docs(&workload.replace("team-b", "team-c")));
    assert_eq!(
        tracing_of(&fresh.resources, "myapp", &[("app", "reviews")]).map(|t| t.sampling),
        Some(10.0)
    );
    let t = crate::translate_loaded(&fresh, &Options::default());
    assert!(
        t.errors()
            .any(|d| d.field.as_deref() == Some("spec.tracing[0].providers[0].name")),
        "{:#?}",
        t.diagnostics
    );
}
