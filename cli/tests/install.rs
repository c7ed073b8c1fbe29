//! `wasmesh install`: prints deploy/kubernetes in kustomization order, or pipes it to kubectl.

use std::path::Path;
use std::process::{Command, Output};

const DEFAULT_IMAGE: &str = "ghcr.io/wasmesh/wasmesh:0.1.0";

fn wasmesh(args: &[&str], path: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmesh"));
    cmd.args(args);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    cmd.output().expect("run wasmesh")
}

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The kinds of a multi-document YAML's documents, in order (a top-level `kind:` each).
fn kinds(yaml: &str) -> Vec<&str> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect()
}

#[test]
fn dry_run_prints_every_manifest_in_kustomization_order() {
    let out = wasmesh(&["install", "--dry-run"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();

    // Each file of kustomization.yaml, whole, after the one before it.
    let kustomization = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let files: Vec<_> = kustomization
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .collect();
    assert_eq!(files.len(), 6, "{kustomization}");
    let mut from = 0;
    for file in &files {
        let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
        let at = printed[from..]
            .find(&text)
            .unwrap_or_else(|| panic!("{file} is not printed whole, after the files before it"));
        from += at + text.len();
    }
    assert_eq!(from, printed.len(), "nothing after the last file");

    let mut crds = vec!["CustomResourceDefinition"; 9];
    let mut expected = vec!["Namespace"];
    expected.append(&mut crds);
    expected.extend([
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
        // The ingress gateway.
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
    ]);
    assert_eq!(kinds(&printed), expected);
    // One `---` between documents, none before the first or after the last.
    let separators = printed.lines().filter(|l| *l == "---").count();
    assert_eq!(separators, expected.len() - 1, "{printed}");
}

#[test]
fn image_replaces_the_control_plane_s_and_the_sidecars_image() {
    let image = "registry.example:5000/mesh/wasmesh@sha256:0123abcd";
    let out = wasmesh(&["install", "--dry-run", "--image", image], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains(DEFAULT_IMAGE));
    assert!(printed.contains(&format!("        image: {image}\n")));
    assert!(printed.contains(&format!(
        "        - name: WASMESH_PROXY_IMAGE\n          value: {image}\n"
    )));

    let out = wasmesh(
        &["install", "--dry-run", "--image", "a b\nkind: Secret"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an image reference"));
}

#[test]
fn without_dry_run_the_manifests_go_to_kubectl_apply() {
    let dir = tempfile::tempdir().unwrap();
    // Without kubectl on PATH: a clear error.
    let out = wasmesh(&["install"], Some(dir.path()));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kubectl is not on PATH"), "{stderr}");

    // A kubectl that records what it is given.
    let kubectl = dir.path().join("kubectl");
    let script = format!(
        "#!/bin/sh\necho \"$@\" > {0}/args\n/bin/cat > {0}/stdin\n",
        dir.path().display()
    );
    std::fs::write(&kubectl, script).unwrap();
    std::fs::set_permissions(
        &kubectl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = wasmesh(&["install"], Some(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(args, "apply --server-side -f -\n");
    let applied = std::fs::read_to_string(dir.path().join("stdin")).unwrap();
    let printed = wasmesh(&["install", "--dry-run"], None).stdout;
    assert_eq!(applied.as_bytes(), printed);

    // kubectl's failure is the command's.
    std::fs::write(&kubectl, "#!/bin/sh\n/bin/cat >/dev/null\nexit 3\n").unwrap();
    let out = wasmesh(&["install"], Some(dir.path()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kubectl apply failed"));
}
